"""The HTTP pieces both serving apps share: reading a body under a limit, the API key check,
the error format of unknown routes, the serving metrics and the replica's gRPC binding.

    PYTHONPATH=. .venv/bin/python -m pytest tests/integration/test_serve.py -q

serve/app.py (one model per app) and serve/multi.py (many models per app) use these, so a
request is read, refused and counted the same way whichever app answers it.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.util import metrics as ray_metrics
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from serve.schemas import (
    ErrorResponse,
    PredictRequest,
    RequestError,
    check_content_type,
    parse_json_body,
)

LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422)}
BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
logger = logging.getLogger("ray.serve")


def answer_route_errors(api: FastAPI, routes: str) -> None:
    """Unknown routes and methods answer in the API's error format, naming the routes."""

    @api.exception_handler(HTTPException)
    async def _route_error(request: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code in (404, 405):
            message = f"no route {request.method} {request.url.path}; routes: {routes}"
        return JSONResponse({"error": message}, status_code=error.status_code)


def read_api_key(env: str | None) -> str:
    """The API key from the variable named `env` on this replica: read once, never logged."""
    key = (os.environ.get(env) or "") if env else ""
    if env and env in os.environ and not key:
        logger.warning(f"{env} is set but empty: the API is served WITHOUT an API key")
    return key


def check_api_key(api_key: str, authorization: str) -> None:
    """`authorization`: an HTTP header's or a gRPC metadata entry's value; no key, no check."""
    if not api_key:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        raise RequestError(
            401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
        )


class ServeMetrics:
    """The serving metrics; names are fixed (dashboards are built on them)."""

    def __init__(self):
        self.requests = ray_metrics.Counter(
            "raylane_serve_requests_total",
            description="HTTP requests answered, by model version and status code",
            tag_keys=("model", "version", "code"),
        )
        self.latency = ray_metrics.Histogram(
            "raylane_serve_request_latency_ms",
            description="time from request to response inside the replica (ms)",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("model", "version"),
        )
        self.batch_size = ray_metrics.Histogram(
            "raylane_serve_batch_size",
            description="requests per batch run on the model",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )
        self.model_version = ray_metrics.Gauge(
            "raylane_serve_model_version",
            description="registry version a replica serves",
            tag_keys=("model", "alias"),
        )
        # many models per app (serve/multi.py): a replica loads a model on first use and evicts
        # the least recently used one past max_models_per_replica
        self.model_loads = ray_metrics.Counter(
            "raylane_serve_model_loads_total",
            description="model versions a replica loaded (first use, reload, alias move)",
            tag_keys=("model", "version"),
        )
        self.model_evictions = ray_metrics.Counter(
            "raylane_serve_model_evictions_total",
            description="models a replica unloaded to make room (least recently used)",
            tag_keys=("model",),
        )


@dataclass
class BatchStats:
    """This replica's batching record, shown by GET /v1/models/NAME."""

    batches: int = 0
    requests: int = 0
    instances: int = 0
    max_batch_size_seen: int = 0
    batches_by_rows: dict[int, int] = field(default_factory=dict)  # rows in a batch -> batches

    def record(self, requests: int, instances: int) -> None:
        self.batches += 1
        self.requests += requests
        self.instances += instances
        self.max_batch_size_seen = max(self.max_batch_size_seen, requests)
        self.batches_by_rows[instances] = self.batches_by_rows.get(instances, 0) + 1


# A client that sends its whole body before reading the answer (Python's urllib, requests) got
# "Connection reset by peer" instead of the 413 for a 25 MB body: a server that answers early and
# closes with body bytes unread makes the kernel reset the connection, which discards the answer
# (curl and httpx read it; measured through Serve's proxy). So the rest of an oversize body is
# read and dropped, up to this many bytes; a body announced as larger is answered at once. The
# refusals that come before the body is read (401, 404, 415) are not drained: reading bodies for
# clients without the key would cost more than their reset.
DRAIN_LIMIT_BYTES = 64 * 2**20


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it passes `limit` bytes (declared or streamed), sent after the
    rest of the body is drained (see DRAIN_LIMIT_BYTES)."""
    too_large = RequestError(
        413, f"the body is larger than {limit} bytes (max_body_bytes); send fewer instances"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
        raise too_large
    body, received = bytearray(), 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received <= limit:
                body += chunk
            elif received > DRAIN_LIMIT_BYTES:
                break
    except ClientDisconnect:  # nobody will read the answer; the metric should not say 500
        raise RequestError(400, "the client disconnected before sending the whole body") from None
    if received > limit or (declared.isdigit() and int(declared) > limit):
        raise too_large
    return bytes(body)


async def read_json(request: Request, limit: int):
    """A JSON request's parsed body: 415 for another content type, 413 past `limit` bytes,
    400 for JSON that does not parse (every POST route of both apps reads its body so)."""
    check_content_type(request.headers.get("content-type"))
    return parse_json_body(await read_body(request, limit))


def bind_replica_grpc_to_node() -> None:
    """On a loopback-only node, keep the replica's inter-deployment gRPC server on loopback.

    Ray Serve 2.60 binds that server to "[::]:0", every interface, whatever the node's address
    (ray/serve/_private/replica.py, `_on_initialized`, which runs after this constructor). On a
    Ray that raylane started itself the node address is 127.0.0.1 (cluster/runtime.py) and
    nothing else on the node listens beyond loopback, so neither does this. On a real cluster
    (a routable node address) Ray's own binding is left alone: other nodes must reach it.
    """
    import ipaddress

    import ray
    from ray.serve._private import replica

    if not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback:
        return
    original = replica.add_port_to_grpc_server
    if getattr(original, "raylane_loopback", False):
        return

    def add_port(server, address: str):
        return original(server, address.replace("[::]", "127.0.0.1", 1))

    add_port.raylane_loopback = True
    replica.add_port_to_grpc_server = add_port

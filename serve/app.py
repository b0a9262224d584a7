"""Serve a registered model over HTTP with Ray Serve: batching, autoscaling, live model updates.

    raylane serve --model digits@production            # http://127.0.0.1:8000, Ctrl-C stops
    serve run serve/config.yaml                        # or `serve deploy` onto a running cluster
    curl -X POST 127.0.0.1:8000/v1/models/digits:predict -d '{"instances": [[0, 0, 5, ...]]}'

Routes (KServe-v1 style; OpenAPI at /docs and /openapi.json):
    POST /v1/models/NAME:predict  {"instances": [...]} -> {"predictions", "probabilities",
                                  "model", "version"}
    GET  /v1/models/NAME          version, input schema, classes, limits, this replica's stats
    GET  /healthz                 liveness; needs no API key
    POST /v2/models/NAME/infer    the Open Inference Protocol v2 (KServe, Triton), REST and,
                                  with --grpc-port, gRPC: serve/v2_server.py
Errors are 4xx with {"error": "<what is wrong and what was expected>"}: 400 malformed JSON,
401 missing/wrong API key (when the env var named by `api_key_env` is set on the replicas),
404 unknown model or route, 413 body over `max_body_bytes` (sent once the rest of the body is
drained, see read_body), 415 a Content-Type that is not JSON, 422 instances that do not fit the
model's input schema (serve/schemas.py) or that drive it to NaN. Serve itself answers 503 past
`max_queued_requests`.

A request is read, authorized and validated on its own, before it joins a batch, so a bad
request never fails the good ones batched with it. Batches follow the load (serve/batching.py):
one forward pass at a time, each taking every request that queued while the last one ran (up
to max_batch_size); an idle model waits at most batch_wait_timeout_s for company. The batch
runs the Predictor once on the stacked rows, in a thread, so the replica's event loop keeps
accepting requests meanwhile.

Model updates without downtime: the served model lives in one attribute, `self.predictor`
(network + schema + version). A new version is downloaded and loaded beside the old one, then
swapped in with one assignment; requests already validated keep the predictor they were
validated against, and every response names the version that produced it. Updates arrive by
- the alias moving: `raylane models promote digits:4 --alias production`; each replica polls
  the alias every `watch_interval_s` (0 turns this off);
- `reconfigure(user_config)`: a deployment `user_config` such as {"model": "digits:4"} or
  {"max_batch_size": 16} (keys left out keep their `args` value) reaches running replicas
  without a restart. Changing `args` in a Serve config rebuilds the app (a rolling restart).

Metrics (`ray.util.metrics`, scraped from each node's metrics endpoint with a `ray_` prefix):
raylane_serve_requests_total{model,version,code}, raylane_serve_request_latency_ms{model,
version}, raylane_serve_batch_size{model} (requests per batch),
raylane_serve_model_version{model,alias}, raylane_rollout_weight{model,alias,candidate}.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve as ray_serve
from ray.serve import Application
from ray.util import metrics as ray_metrics
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cluster.config import add_common_args
from cluster.errors import ConfigError, run_cli
from cluster.registry import ModelRef
from cluster.runtime import connect, use_code
from cluster.storage import Storage
from serve.batching import Batcher
from serve.canary import Canary
from serve.config import ServeArgs, check_batch_fits, parse_dynamic
from serve.grpc_proxy import grpc_address, serve_start_options
from serve.predictor import Prediction, Predictor
from serve.scale_to_zero import report_cold_starts
from serve.schemas import (
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    RequestError,
    check_content_type,
    extract_instances,
    parse_json_body,
)
from serve.v2_server import OpenInferenceV2
from serve.v2_server import router as v2_router
from workloads.checkpoint import open_registry
from workloads.trust import add_allow_flag

APP_NAME = "raylane"
ROUTES = (
    "POST /v1/models/NAME:predict, GET /v1/models/NAME, GET /healthz, GET /docs, "
    "POST /v2/models/NAME/infer, GET /v2/models/NAME[/ready], GET /v2/health/live|ready"
)
CLI_SETTINGS = (
    "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests",
    "num_replicas", "num_cpus", "num_gpus", "max_body_bytes", "max_instances", "watch_interval_s",
)  # fmt: skip
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="raylane",
    version="1",
    description="Predictions from a registered model. Send raw feature values; the model's "
    "own normalization is applied on the server. GET /v1/models/NAME says what an instance is.",
)
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422)}
api.include_router(v2_router)  # the v2 routes are OpenInferenceV2's methods
BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


@api.exception_handler(HTTPException)
async def _route_error(request: Request, error: HTTPException) -> JSONResponse:
    """Unknown routes and methods answer in the API's error format, naming the routes."""
    message = str(error.detail)
    if error.status_code in (404, 405):
        message = f"no route {request.method} {request.url.path}; routes: {ROUTES}"
    return JSONResponse({"error": message}, status_code=error.status_code)


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


@dataclass
class BatchStats:
    """This replica's batching record, shown by GET /v1/models/NAME."""

    batches: int = 0
    requests: int = 0
    instances: int = 0
    max_batch_size_seen: int = 0
    batches_by_rows: dict[int, int] = dataclasses.field(
        default_factory=dict
    )  # rows in a batch -> batches

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


# Defined before ModelServer: Serve pickles the class when it is decorated, with the module
# globals that exist at that moment.
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


@ray_serve.deployment(name="ModelServer")
@ray_serve.ingress(api)
class ModelServer(OpenInferenceV2):
    """One replica: validates each request, batches the valid ones, names the version."""

    async def __init__(self, args: dict):
        bind_replica_grpc_to_node()
        self.args = ServeArgs.parse(args)
        env = self.args.api_key_env
        self._api_key = (os.environ.get(env) or "") if env else ""  # read once, never logged
        if env and env in os.environ and not self._api_key:
            logger.warning(f"{env} is set but empty: the API is served WITHOUT an API key")
        self.registry = open_registry(Storage.from_uri(self.args.storage))
        self.device = "cuda" if self.args.num_gpus > 0 else "cpu"
        self.metrics = ServeMetrics()
        self.stats = BatchStats()
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=self.args.max_batch_size,
            batch_wait_timeout_s=self.args.batch_wait_timeout_s,
        )
        self.replica = ray_serve.get_replica_context().replica_id.unique_id
        self._lock = asyncio.Lock()
        self.ref = ModelRef.parse(self.args.model)
        self.predictor: Predictor | None = None
        await self._switch(self.ref)  # a model that cannot load fails the deployment, loudly
        self._apply(self.args.dynamic())
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        # Canary rollouts (serve/canary.py): the candidate beside self.predictor, per request.
        self.canary = Canary(
            self.registry, device=self.device, allow_modules=self.args.custom_model_modules
        )
        self._canary = asyncio.get_running_loop().create_task(
            self.canary.follow(lambda: self.ref, lambda: self.watch_interval_s)
        )

    async def __del__(self):
        """Serve calls this as the replica stops: the watcher and the batcher go, quietly."""
        for task in (getattr(self, "_watcher", None), getattr(self, "_canary", None)):
            if task is not None:
                task.cancel()
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()

    # ------------------------------------------------------------------ model updates

    async def reconfigure(self, user_config: dict) -> None:
        """user_config {"model", "max_batch_size", "batch_wait_timeout_s", "watch_interval_s"}:
        each key left out keeps its `args` value. Serving goes on while a new model loads."""
        config = parse_dynamic(user_config).model_dump(exclude_none=True)
        settings = {**self.args.dynamic(), **config}
        try:
            check_batch_fits(settings["max_batch_size"], self.args.max_ongoing_requests)
        except ValueError as error:
            raise ConfigError(f"invalid user_config: {error}") from None
        await self._switch(ModelRef.parse(settings["model"]))
        self._apply(settings)

    async def _switch(self, ref: ModelRef | None = None) -> None:
        """Resolve `ref` (default: the current one, read under the lock, so a watcher poll that
        waited behind a reconfigure follows the new ref); if it names another version, load that
        beside the current one and swap it in with one assignment."""
        async with self._lock:
            ref = self.ref if ref is None else ref
            name, version = await asyncio.to_thread(self.registry.resolve, ref)
            old = self.predictor
            if old is None or (old.name, old.version) != (name, version):
                self.predictor = await asyncio.to_thread(
                    Predictor.load_version, self.registry, name, version, device=self.device,
                    allow_modules=self.args.custom_model_modules,
                )  # fmt: skip
                was = f" (was {old.name}:{old.version})" if old else ""
                logger.info(f"replica {self.replica} serves {name}:{version} for {ref}{was}")
            self.ref = ref
            alias = ref.alias or ("latest" if ref.version is None else "pinned")
            self.metrics.model_version.set(version, tags={"model": name, "alias": alias})

    def _apply(self, settings: dict) -> None:
        self.batcher.max_batch_size = settings["max_batch_size"]
        self.batcher.batch_wait_timeout_s = settings["batch_wait_timeout_s"]
        self.watch_interval_s = settings["watch_interval_s"]

    async def _watch(self) -> None:
        """Follow the alias (or `latest`): a promotion reaches this replica within one interval.
        Storage trouble is logged once per new message and the current model keeps serving."""
        last_problem = ""
        while True:
            interval = self.watch_interval_s
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval <= 0 or self.ref.version is not None:
                continue
            try:
                await self._switch()
                last_problem = ""
            except Exception as error:  # storage down, alias deleted, a broken version, ...
                problem = f"{type(error).__name__}: {error}"
                if problem != last_problem:
                    serving = f"{self.predictor.name}:{self.predictor.version}"
                    logger.warning(f"watching {self.ref} failed ({problem}); serving {serving}")
                last_problem = problem

    # ------------------------------------------------------------------ routes

    @api.post(
        "/v1/models/{name}:predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=BODY_DOC,
        summary="Classify instances",
    )
    async def predict(self, name: str, request: Request) -> JSONResponse:
        start = time.perf_counter()
        predictor = self.canary.choose(self.predictor, request.headers)  # a rollout's weight
        try:
            self._authorize(request)
            self._check_name(name, predictor)
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, self.args.max_body_bytes)
            instances = extract_instances(parse_json_body(body))
            rows = predictor.schema.parse(instances, max_instances=self.args.max_instances)
            self.canary.inject_fault(predictor)  # tests only: $RAYLANE_TEST_FAULTS
            used, prediction = await self.batcher.submit((predictor, rows))
            return self._reply(200, used.response(prediction), used, start, predicted=True)
        except RequestError as error:
            return self._reply(
                error.status_code, {"error": str(error)}, predictor, start, predicted=True
            )
        except Exception as error:  # a bug, not the client's fault: say so without a traceback
            logger.exception(f"predict failed on replica {self.replica}")
            body = {
                "error": f"internal error ({type(error).__name__}); it is logged on the replica"
            }
            return self._reply(500, body, predictor, start, predicted=True)

    @api.get("/v1/models/{name}", responses=ERRORS, summary="Model version, schema and stats")
    async def describe(self, name: str, request: Request) -> JSONResponse:
        start = time.perf_counter()
        predictor = self.predictor
        try:
            self._authorize(request)
            if name.endswith(":predict"):
                raise RequestError(405, f'{request.url.path} takes POST {{"instances": [...]}}')
            self._check_name(name, predictor)
        except RequestError as error:
            return self._reply(error.status_code, {"error": str(error)}, predictor, start)
        info = {
            **predictor.describe(),
            "ref": str(self.ref),
            "limits": {
                "max_instances": self.args.max_instances,
                "max_body_bytes": self.args.max_body_bytes,
            },
            "batching": {
                "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_timeout_s": self.batcher.batch_wait_timeout_s,
            },
            "replica": self.replica,
            "stats": asdict(self.stats),
        }
        return self._reply(200, info, predictor, start)

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.predictor.name, "version": self.predictor.version}

    # ------------------------------------------------------------------ batching

    async def _run_batch(
        self, items: list[tuple[Predictor, np.ndarray]]
    ) -> list[tuple[Predictor, Prediction]]:
        """Requests validated against the same predictor run as one forward pass. (Two groups
        only when a swap happened between a request's validation and its batch.)"""
        self.stats.record(len(items), sum(len(rows) for _, rows in items))
        self.metrics.batch_size.observe(len(items), tags={"model": items[0][0].name})
        groups: dict[int, list[int]] = {}
        for index, (predictor, _) in enumerate(items):
            groups.setdefault(id(predictor), []).append(index)
        results: list = [None] * len(items)
        for indices in groups.values():
            predictor = items[indices[0]][0]
            rows = np.concatenate([items[i][1] for i in indices])
            prediction = await asyncio.to_thread(predictor.predict, rows)
            start = 0
            for i in indices:
                stop = start + len(items[i][1])
                results[i] = (predictor, prediction[start:stop])
                start = stop
        return results

    # ------------------------------------------------------------------ helpers

    def _authorize(self, request: Request) -> None:
        self._check_api_key(request.headers.get("authorization", ""))

    def _check_api_key(self, authorization: str) -> None:
        """`authorization`: an HTTP header's or a gRPC metadata entry's value."""
        if not self._api_key:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            raise RequestError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
            )

    def _check_name(self, name: str, predictor: Predictor) -> None:
        if name != predictor.name:
            raise RequestError(
                404,
                f"no model {name!r} here; this server serves {predictor.name!r}: "
                f"POST /v1/models/{predictor.name}:predict",
            )

    def _reply(
        self, code: int, body: dict, predictor: Predictor, start: float, predicted: bool = False
    ) -> JSONResponse:
        """The answer, counted in the metrics (and, for predictions, in a rollout's window)."""
        self._record(code, predictor, start, predicted=predicted)
        headers = {"X-Model-Version": str(predictor.version)}
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(body, status_code=code, headers=headers)

    def _record(self, code: int, predictor: Predictor, start: float, predicted: bool) -> None:
        """Count one answer (a gRPC one by its HTTP equivalent) and its latency; a prediction
        also in a rollout's window."""
        tags = {"model": predictor.name, "version": str(predictor.version), "code": str(code)}
        self.metrics.requests.inc(tags=tags)
        latency_ms = (time.perf_counter() - start) * 1000
        self.metrics.latency.observe(
            latency_ms, tags={"model": tags["model"], "version": tags["version"]}
        )
        if predicted:
            self.canary.record(predictor.version, code, latency_ms)


def warn_if_open(api_key_env: str | None) -> None:
    """A key variable that is set but empty turns authentication off: say so, loudly."""
    if api_key_env and api_key_env in os.environ and not os.environ[api_key_env]:
        print(f"warning: {api_key_env} is set but empty: serving WITHOUT an API key", flush=True)


def deployment_options(args: ServeArgs) -> dict:
    """ServeArgs -> `Deployment.options(...)`: replicas, resources, queues, user_config."""
    options = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        "user_config": args.dynamic(),
    }
    if args.autoscaling_config is not None:
        options["autoscaling_config"] = args.autoscaling_config
    else:
        options["num_replicas"] = args.num_replicas
    return options


def deploy(
    args: ServeArgs, *, host: str, port: int, access_log: bool = True,
    grpc_port: int | None = None, started: Callable[[], None] | None = None,
) -> str:  # fmt: skip
    """Start Serve's HTTP proxy on host:port (and its gRPC proxy on host:grpc_port), run the
    app, return the model's predict URL.

    `access_log=False` keeps one line per request and Serve's INFO lines out of the logs (and,
    through Ray's log streaming, out of the driver's console): the pipeline's own sample
    requests would bury its report."""
    args = ServeArgs.parse(args)
    log_settings = {
        "enable_access_log": access_log,
        "log_level": "INFO" if access_log else "WARNING",
    }
    if not access_log:  # this driver's own "Started Serve", "Application ... is ready" lines
        logger.setLevel(logging.WARNING)
    options = serve_start_options(host=host, port=port, grpc_port=grpc_port)
    ray_serve.start(**options, logging_config=log_settings)
    if started is not None:  # Serve is up, the app not yet deployed
        started()
    ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/", logging_config=log_settings)
    shown = "127.0.0.1" if host == "0.0.0.0" else host  # a URL a client on this host can use
    return f"http://{shown}:{port}/v1/models/{ModelRef.parse(args.model).name}:predict"


def build_app(args: ServeArgs) -> Application:
    """The Serve import path (`serve.app:build_app`); `args` as in serve/config.yaml."""
    args = ServeArgs.parse(args)
    return ModelServer.options(**deployment_options(args)).bind(args.model_dump())


# ---------------------------------------------------------------------- raylane serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane serve",
        description="Serve a registered model over HTTP with Ray Serve (foreground; Ctrl-C stops).",
    )
    add = parser.add_argument
    add("--model", required=True, help="NAME@ALIAS (follows the alias), NAME:VERSION or NAME")
    add_common_args(parser, overrides=None)
    add("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 for all)")
    add("--port", type=int, default=8000, help="HTTP port (default 8000)")
    add("--grpc-port", type=int, help="serve the v2 gRPC API on this port too (default: off)")
    for name, field in ServeArgs.model_fields.items():
        if name in CLI_SETTINGS:  # the same names, defaults and help as serve/config.yaml args
            flag, default = f"--{name.replace('_', '-')}", field.default
            add(flag, type=type(default), default=default, help=f"{field.description} ({default})")
    add("--max-replicas", type=int, help="autoscale between --min-replicas and this")
    add(
        "--min-replicas",
        type=int,
        default=1,
        help="with --max-replicas (default 1; 0: scale to zero when idle, serve/scale_to_zero.py)",
    )
    add("--target-ongoing-requests", type=float, default=2.0, help="autoscaling target per replica")
    add("--api-key-env", default="RAYLANE_API_KEY", help="env var holding the API key, if set")
    add_allow_flag(parser, dest="custom_model_modules")
    options = vars(parser.parse_args(argv))

    host, port, address = options.pop("host"), options.pop("port"), options.pop("address")
    grpc_port = options.pop("grpc_port")
    use_code(options.pop("working_dir"), options.pop("py_modules"))
    autoscaling = {
        "min_replicas": options.pop("min_replicas"),
        "max_replicas": options.pop("max_replicas"),
        "target_ongoing_requests": options.pop("target_ongoing_requests"),
    }
    if autoscaling["max_replicas"] is not None:
        options["autoscaling_config"] = autoscaling
    args = ServeArgs.parse(options)

    storage = Storage.from_uri(args.storage)
    storage.check()
    # Load the version here first: a missing, corrupt or refused model is one line now, not a
    # replica's traceback after Ray and Serve have started.
    registry = open_registry(storage)
    name, version = registry.resolve(args.model)
    Predictor.load_version(registry, name, version, allow_modules=args.custom_model_modules)
    warn_if_open(args.api_key_env)
    args = args.model_copy(update={"storage": storage.uri})

    connect(address)
    # SIGTERM (kill, a process manager) stops like Ctrl-C: Ray's own exit on an unhandled
    # SIGTERM ends in a C++ abort dump and leaves the app deployed. Set right after ray.init
    # (which installs Ray's handlers): the app answers before deploy() returns, and a SIGTERM
    # sent as soon as it answers came in before a handler set after deploy (test_jobs).
    signal.signal(signal.SIGTERM, _interrupt)
    deployed = False
    stops = []  # scale to zero: the cold-start reporter's stop (serve/scale_to_zero.py)
    watch = (args.autoscaling_config or {}).get("min_replicas") == 0
    started = (
        (lambda: stops.append(report_cold_starts(APP_NAME, f"{name}:{version}"))) if watch else None
    )
    try:
        url = deploy(args, host=host, port=port, grpc_port=grpc_port, started=started)
        deployed = True
        print(f"serving {name}:{version} ({args.model}) at {url}")
        if grpc_port:
            print(f"gRPC (Open Inference Protocol v2) at {grpc_address(host, grpc_port)}")
        print(f"docs at {url.split('/v1/')[0]}/docs; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C must not leave a trace
            for stop in stops:
                stop()
            if deployed:
                ray_serve.delete(APP_NAME)
            else:  # interrupted while deploying
                ray_serve.shutdown()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_cli(main)

"""Serve a registered model over HTTP with Ray Serve: batching, autoscaling, live model updates.

    raylane serve --model digits@production            # http://127.0.0.1:8000, Ctrl-C stops
    raylane serve --models digits@production,wine:3    # many models in one app: serve/multi.py
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
raylane_serve_model_version{model,alias}, raylane_rollout_weight{model,alias,candidate},
raylane_serve_model_loads_total{model,version}.
"""

import asyncio
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve as ray_serve
from ray.serve import Application

from cluster.errors import ConfigError, run_cli
from cluster.registry import ModelRef
from cluster.storage import Storage
from serve.batching import Batcher
from serve.canary import Canary
from serve.config import ServeArgs, check_batch_fits, parse_dynamic
from serve.grpc_proxy import serve_start_options
from serve.http import (
    BODY_DOC,
    ERRORS,
    BatchStats,
    ServeMetrics,
    answer_route_errors,
    bind_replica_grpc_to_node,
    check_api_key,
    read_api_key,
    read_json,
)
from serve.multi import build_multi_app
from serve.predictor import Prediction, Predictor
from serve.schemas import (
    PredictResponse,
    RequestError,
    extract_instances,
)
from serve.slot import ModelSlot, follow, predict_groups
from serve.v2_server import OpenInferenceV2
from serve.v2_server import router as v2_router
from workloads.checkpoint import open_registry

APP_NAME = "raylane"
ROUTES = (
    "POST /v1/models/NAME:predict, GET /v1/models/NAME, GET /healthz, GET /docs, "
    "POST /v2/models/NAME/infer, GET /v2/models/NAME[/ready], GET /v2/health/live|ready"
)
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="raylane",
    version="1",
    description="Predictions from a registered model. Send raw feature values; the model's "
    "own normalization is applied on the server. GET /v1/models/NAME says what an instance is.",
)
api.include_router(v2_router)  # the v2 routes are OpenInferenceV2's methods
answer_route_errors(api, ROUTES)


@ray_serve.deployment(name="ModelServer")
@ray_serve.ingress(api)
class ModelServer(OpenInferenceV2):
    """One replica: validates each request, batches the valid ones, names the version."""

    async def __init__(self, args: dict):
        # The v2 routes are an included APIRouter, which FastAPI resolves per request from the
        # endpoints' signatures; @ray_serve.ingress above makes them take `self` when this
        # module is imported. Serve ships this class by value, so import the module here: a
        # replica that never did answered the v2 routes 422 "self: Field required".
        importlib.import_module(__name__)
        bind_replica_grpc_to_node()
        self.args = ServeArgs.parse(args)
        self._api_key = read_api_key(self.args.api_key_env)
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
        self.slot = ModelSlot(
            self.registry, ModelRef.parse(self.args.model), device=self.device,
            allow_modules=self.args.custom_model_modules, metrics=self.metrics,
            replica=self.replica,
        )  # fmt: skip
        await self.slot.switch()  # a model that cannot load fails the deployment, loudly
        self._apply(self.args.dynamic())
        self._watcher = asyncio.get_running_loop().create_task(
            follow(lambda: [self.slot], lambda: self.watch_interval_s)
        )
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
        await self.slot.switch(ModelRef.parse(settings["model"]))
        self._apply(settings)

    @property
    def predictor(self) -> Predictor:
        """The version served now (serve/slot.py swaps it whole)."""
        return self.slot.predictor

    @property
    def ref(self) -> ModelRef:
        return self.slot.ref

    def _apply(self, settings: dict) -> None:
        self.batcher.max_batch_size = settings["max_batch_size"]
        self.batcher.batch_wait_timeout_s = settings["batch_wait_timeout_s"]
        self.watch_interval_s = settings["watch_interval_s"]

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
            instances = extract_instances(await read_json(request, self.args.max_body_bytes))
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
        """Requests validated against the same predictor run as one forward pass."""
        self.stats.record(len(items), sum(len(rows) for _, rows in items))
        self.metrics.batch_size.observe(len(items), tags={"model": items[0][0].name})
        return await predict_groups(items)

    # ------------------------------------------------------------------ helpers

    def _authorize(self, request: Request) -> None:
        self._check_api_key(request.headers.get("authorization", ""))

    def _check_api_key(self, authorization: str) -> None:
        """`authorization`: an HTTP header's or a gRPC metadata entry's value."""
        check_api_key(self._api_key, authorization)

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
    app, return the model's predict URL (with `models`, the URL that lists them).

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
    ray_serve.run(
        build_app(args), name=args.app_name, route_prefix=args.route_prefix,
        logging_config=log_settings,
    )  # fmt: skip
    shown = "127.0.0.1" if host == "0.0.0.0" else host  # a URL a client on this host can use
    base = f"http://{shown}:{port}{args.route_prefix.rstrip('/')}/v1/models"
    return base if args.models else f"{base}/{ModelRef.parse(args.model).name}:predict"


def build_app(args: ServeArgs) -> Application:
    """The Serve import path (`serve.app:build_app`); `args` as in serve/config.yaml. With
    `models`, the app of many models (serve/multi.py)."""
    args = ServeArgs.parse(args)
    if args.models:
        return build_multi_app(args, deployment_options(args))
    return ModelServer.options(**deployment_options(args)).bind(args.model_dump())


# ---------------------------------------------------------------------- raylane serve


def main(argv: Sequence[str] | None = None) -> int:
    """`raylane serve` (serve/command.py), also as `python -m serve.app`."""
    from serve.command import main as serve_command

    return serve_command(argv)


if __name__ == "__main__":
    run_cli(main)

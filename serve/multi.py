"""Many models in one Serve app: N models share M replicas, each loaded on first use.

    raylane serve --models digits@production,wine@production --max-models-per-replica 2
    curl -X POST 127.0.0.1:8000/v1/models/wine:predict -d '{"instances": [{...}]}'
    curl 127.0.0.1:8000/v1/models                       # the models, each alias's version now

Two deployments (Ray Serve model multiplexing). `ModelRouter`, the HTTP ingress, checks the
API key, the name (a model the app does not serve is a 404 naming those it does), the body and
its JSON, then hands the instances to `ModelPool` through a handle with
`multiplexed_model_id=NAME`: Serve's router sends them to a replica that has NAME loaded if
one does (else to the one with the fewest models), and that replica loads NAME on first use,
evicting its least recently used model past `max_models_per_replica`
(`@serve.multiplexed`). A pool replica holds one serve/slot.py slot per loaded model, so each
model follows its own alias (NAME@ALIAS) or latest version every `watch_interval_s`, loading
the new version beside the old one, as the one-model app does; a pinned NAME:VERSION stays.

Counted: raylane_serve_model_loads_total{model,version} and
raylane_serve_model_evictions_total{model}, beside Ray's own serve_multiplexed_models_load_counter
/ _unload_counter and serve_num_multiplexed_models; GET /v1/models/NAME shows the answering
replica's loads and evictions ("models"). POST /v2/models/NAME/infer (Open Inference Protocol
v2 REST) takes the same path, decoded by serve/v2.py as in the one-model app. Not here
(one-model app only): canary rollouts, gRPC and the other v2 routes (metadata, readiness).
"""

import asyncio
import logging
import time
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve as ray_serve
from ray.serve.handle import DeploymentHandle

from cluster.errors import ConfigError, RaylaneError
from cluster.storage import Storage
from serve.batching import Batcher
from serve.catalog import Catalog, ModelCounts
from serve.config import ServeArgs, check_batch_fits, parse_dynamic
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
from serve.predictor import Predictor
from serve.schemas import (
    PredictResponse,
    RequestError,
    extract_instances,
)
from serve.slot import ModelSlot, follow, predict_groups
from serve.v2 import InferRequest, infer_request_from_json, infer_response_json, rows_from_inputs
from workloads.checkpoint import open_registry

ROUTES = (
    "POST /v1/models/NAME:predict, GET /v1/models, GET /v1/models/NAME, GET /healthz, "
    "POST /v2/models/NAME/infer"
)
ROUTER_CPUS = 0.1  # the router parses and forwards; the models' CPUs are the pool's
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="raylane (many models)",
    version="1",
    description="Predictions from the registered models this app serves, by name. GET "
    "/v1/models lists them; GET /v1/models/NAME says what an instance of NAME is.",
)
answer_route_errors(api, ROUTES)


class PooledSlot(ModelSlot):
    """A slot in Serve's multiplexed cache: Serve calls __del__ when it evicts the slot."""

    on_evict = None  # set once the version has loaded: a failed load is no eviction

    def __del__(self):
        on_evict, self.on_evict = self.on_evict, None  # once: Serve calls it, then the GC
        if on_evict is not None:
            on_evict(self.ref.name)


@ray_serve.deployment(name="ModelPool")
class ModelPool:
    """A replica of many models: loads each on first use, evicts the least recently used."""

    async def __init__(self, args: dict):
        bind_replica_grpc_to_node()
        self.args = ServeArgs.parse(args)
        self.registry = open_registry(Storage.from_uri(self.args.storage))
        self.catalog = Catalog(self.args.models)
        self.metrics, self.stats, self.counts = ServeMetrics(), BatchStats(), ModelCounts()
        self.replica = ray_serve.get_replica_context().replica_id.unique_id
        self.slots: dict[str, PooledSlot] = {}  # what Serve's cache holds, for the watcher
        self.batcher = Batcher(self._run_batch, max_batch_size=1, batch_wait_timeout_s=0)
        self._apply(self.args.dynamic())

        # Decorated here, not on the class: the limit is a setting (Serve finds an instance's
        # multiplexed function too: ray/serve/_private/utils.py, _callable_uses_multiplexing).
        # A plain function: Serve keeps its cache on the decorated object, which a bound
        # method cannot carry.
        async def load_model(name: str) -> PooledSlot:
            return await self._load(name)

        limit = self.args.max_models_per_replica
        self.get_slot = ray_serve.multiplexed(max_num_models_per_replica=limit)(load_model)
        self._watcher = asyncio.get_running_loop().create_task(
            follow(lambda: list(self.slots.values()), lambda: self.watch_interval_s)
        )

    async def __del__(self):
        if getattr(self, "_watcher", None) is not None:
            self._watcher.cancel()
        if getattr(self, "batcher", None) is not None:
            self.batcher.close()

    async def reconfigure(self, user_config: dict) -> None:
        """user_config {"max_batch_size", "batch_wait_timeout_s", "watch_interval_s"}."""
        config = parse_dynamic(user_config).model_dump(exclude_none=True)
        if "model" in config:
            raise ConfigError("user_config: `model` is for one-model apps; change args.models")
        settings = {**self.args.dynamic(), **config}
        try:
            check_batch_fits(settings["max_batch_size"], self.args.max_ongoing_requests)
        except ValueError as error:
            raise ConfigError(f"invalid user_config: {error}") from None
        self._apply(settings)

    def _apply(self, settings: dict) -> None:
        self.batcher.max_batch_size = settings["max_batch_size"]
        self.batcher.batch_wait_timeout_s = settings["batch_wait_timeout_s"]
        self.watch_interval_s = settings["watch_interval_s"]

    async def _load(self, name: str) -> PooledSlot:
        """Serve's multiplexer calls this on a miss, after evicting past the limit."""
        slot = PooledSlot(
            self.registry, self.catalog.ref(name), device=self.device,
            allow_modules=self.args.custom_model_modules, metrics=self.metrics,
            replica=self.replica,
        )  # fmt: skip
        await slot.switch()
        slot.on_evict = self._evicted
        self.slots[name] = slot
        self.counts.loaded(name)
        return slot

    def _evicted(self, name: str) -> None:  # in a thread of Serve's: no awaiting here
        self.slots.pop(name, None)
        self.counts.evicted(name)
        self.metrics.model_evictions.inc(tags={"model": name})
        logger.info(f"replica {self.replica} evicted {name} (least recently used)")

    @property
    def device(self) -> str:
        return "cuda" if self.args.num_gpus > 0 else "cpu"

    async def predict(self, instances: list) -> tuple[int, dict, int | None]:
        """(status, body, version) for the v1 instances of the request's model."""
        limit = self.args.max_instances
        return await self._answer(lambda schema: schema.parse(instances, max_instances=limit))

    async def v2_infer(self, infer: InferRequest) -> tuple[int, dict, int | None]:
        """(status, body, version) for an Open Inference Protocol v2 request (serve/v2.py)."""
        limit = self.args.max_instances
        return await self._answer(
            lambda schema: rows_from_inputs(schema, infer.inputs, max_instances=limit),
            lambda answer: infer_response_json(answer, infer),
        )

    async def _answer(self, rows_of, reply=lambda answer: answer) -> tuple[int, dict, int | None]:
        """Rows validated against the model's schema -> a batch -> (status, reply, version).
        A refusal is returned, not raised: it crosses to the router as a plain value."""
        predictor = None
        try:
            predictor = await self._predictor()
            rows = rows_of(predictor.schema)
            used, prediction = await self.batcher.submit((predictor, rows))
            return 200, reply(used.response(prediction)), used.version
        except RequestError as error:
            return error.status_code, {"error": str(error)}, predictor and predictor.version

    async def describe(self) -> tuple[int, dict, int | None]:
        """GET /v1/models/NAME: the model's version and schema, and this replica's record."""
        try:
            predictor = await self._predictor()
        except RequestError as error:
            return error.status_code, {"error": str(error)}, None
        record = self.counts.describe(loaded=list(self.slots))
        info = {
            **predictor.describe(),
            "ref": str(self.catalog.ref(predictor.name)),
            "limits": {"max_instances": self.args.max_instances},
            "replica": self.replica,
            "stats": asdict(self.stats),
            "models": {**record, "max_models_per_replica": self.args.max_models_per_replica},
        }
        return 200, info, predictor.version

    async def _predictor(self) -> Predictor:
        """The request's model (its multiplexed model id), loaded if it is not yet."""
        name = ray_serve.get_multiplexed_model_id()
        try:
            return (await self.get_slot(name)).predictor
        except RaylaneError as error:  # an alias deleted, storage down, a broken version
            raise RequestError(503, f"model {name!r} cannot be loaded now: {error}") from None

    async def _run_batch(self, items: list) -> list:
        self.stats.record(len(items), sum(len(rows) for _, rows in items))
        self.metrics.batch_size.observe(len(items), tags={"model": items[0][0].name})
        return await predict_groups(items)


@ray_serve.deployment(name="ModelRouter")
@ray_serve.ingress(api)
class ModelRouter:
    """The app's HTTP ingress: refuses what it can alone, sends the rest to the pool by name."""

    def __init__(self, args: dict, pool: DeploymentHandle):
        bind_replica_grpc_to_node()
        self.args = ServeArgs.parse(args)
        self.pool = pool
        self.catalog = Catalog(self.args.models)
        self.registry = open_registry(Storage.from_uri(self.args.storage))
        self.metrics = ServeMetrics()
        self._api_key = read_api_key(self.args.api_key_env)
        self._listed: tuple[float, list[str]] = (0.0, [])

    @api.post(
        "/v1/models/{name}:predict",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=BODY_DOC,
        summary="Classify instances with the model NAME",
    )
    async def predict(self, name: str, request: Request) -> JSONResponse:
        async def ask() -> tuple[int, dict, int | None]:
            instances = extract_instances(await read_json(request, self.args.max_body_bytes))
            return await self._model(name).predict.remote(instances)

        return await self._answer(name, request, ask)

    @api.post("/v2/models/{name}/infer", summary="Open Inference Protocol v2 inference with NAME")
    async def v2_infer(self, name: str, request: Request) -> JSONResponse:
        async def ask() -> tuple[int, dict, int | None]:
            infer = infer_request_from_json(await read_json(request, self.args.max_body_bytes))
            return await self._model(name).v2_infer.remote(infer)

        return await self._answer(name, request, ask)

    @api.get("/v1/models/{name}", responses=ERRORS, summary="Model NAME: version, schema, stats")
    async def describe(self, name: str, request: Request) -> JSONResponse:
        async def ask() -> tuple[int, dict, int | None]:
            if name.endswith(":predict"):
                raise RequestError(405, f'{request.url.path} takes POST {{"instances": [...]}}')
            return await self._model(name).describe.remote()

        return await self._answer(name, request, ask)

    @api.get("/v1/models", summary="The models served, each with the version it answers with")
    async def list_models(self, request: Request) -> JSONResponse:
        try:
            check_api_key(self._api_key, request.headers.get("authorization", ""))
        except RequestError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status_code)
        names = await self._names()
        return JSONResponse({"models": await asyncio.to_thread(self._resolve_all, names)})

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": len(self.catalog.names(self._listed[1]))}

    def _model(self, name: str) -> DeploymentHandle:
        return self.pool.options(multiplexed_model_id=name)

    async def _answer(self, name: str, request: Request, ask) -> JSONResponse:
        """Check the key and the name, run `ask` (the pool's part), count and send the answer."""
        start, version = time.perf_counter(), None
        try:
            check_api_key(self._api_key, request.headers.get("authorization", ""))
            self.catalog.ref(name, known=await self._names() if self.catalog.every else None)
            code, body, version = await ask()
        except RequestError as error:
            code, body = error.status_code, {"error": str(error)}
        except Exception as error:  # a bug, not the client's fault: say so without a traceback
            logger.exception(f"{request.method} {request.url.path} failed")
            code = 500
            body = {"error": f"internal error ({type(error).__name__}); it is logged on the router"}
        tags = {"model": name, "version": str(version or ""), "code": str(code)}
        self.metrics.requests.inc(tags=tags)
        latency_ms = (time.perf_counter() - start) * 1000
        self.metrics.latency.observe(latency_ms, tags={"model": name, "version": tags["version"]})
        headers = {"X-Model-Version": str(version)} if version is not None else {}
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(body, status_code=code, headers=headers)

    async def _names(self) -> list[str]:
        """The names served; with 'all', the registry's models, listed again at most once per
        watch interval (a model registered since then is served after the next listing)."""
        if not self.catalog.every:
            return self.catalog.names()
        listed_at, names = self._listed
        if time.monotonic() - listed_at > max(self.args.watch_interval_s, 1.0):
            names = await asyncio.to_thread(self.registry.models)
            self._listed = (time.monotonic(), names)
        return names

    def _resolve_all(self, names: list[str]) -> list[dict]:
        """Each name's ref and the version it resolves to now (what a replica will serve
        within one watch interval); a ref that does not resolve says why."""
        rows = []
        for name in names:
            ref = self.catalog.ref(name)
            try:
                rows.append(
                    {"name": name, "ref": str(ref), "version": self.registry.resolve(ref)[1]}
                )
            except RaylaneError as error:
                rows.append({"name": name, "ref": str(ref), "version": None, "error": str(error)})
        return rows


def build_multi_app(args: ServeArgs, pool_options: dict):
    """The router bound to the pool; `pool_options` as serve.app.deployment_options makes."""
    router = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "ray_actor_options": {"num_cpus": ROUTER_CPUS},
    }
    pool = ModelPool.options(**pool_options).bind(args.model_dump())
    return ModelRouter.options(**router).bind(args.model_dump(), pool)

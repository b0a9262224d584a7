"""The plain-FastAPI baseline of the serving benchmark: the same `Predictor` and the same
`Batcher` as a raylane Serve replica, behind FastAPI and uvicorn, no Ray.

    RAYLANE_BENCH_MODEL=bench-mlp:1 RAYLANE_STORAGE=s3://raylane-bench/serve \\
        uvicorn bench.plain_server:app --host 127.0.0.1 --port 8001 --workers 1

It answers the same route and body as raylane's Serve app (`POST /v1/models/NAME:predict`),
validates with the same schema code, batches with serve/batching.py's Batcher under the same
settings (`RAYLANE_BENCH_MAX_BATCH_SIZE`, default 32; ServeArgs' batch_wait_timeout_s) and runs
each batch's forward pass in a thread, as the replica does; so "Serve vs FastAPI" measures
what Ray adds, not batching. `GET /v1/models/NAME` reports the same batch stats as the replica
(`stats`: batches, requests, instances), from which the benchmark reads the batch size reached.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from dataclasses import asdict

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cluster.storage import Storage
from serve.batching import Batcher
from serve.config import ServeArgs
from serve.http import BatchStats
from serve.predictor import Predictor
from serve.schemas import RequestError, extract_instances, parse_json_body
from workloads.checkpoint import open_registry

DEFAULTS = ServeArgs.model_fields
state: dict = {}


async def run_batch(rows: list[np.ndarray]) -> list:
    """One forward pass over the stacked rows of every request in the batch, in a thread (the
    event loop keeps accepting requests meanwhile); each request gets its slice back."""
    predictor: Predictor = state["predictor"]
    state["stats"].record(len(rows), sum(len(r) for r in rows))
    prediction = await asyncio.to_thread(predictor.predict, np.concatenate(rows))
    bounds = np.cumsum([0] + [len(r) for r in rows])
    return [prediction[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


@asynccontextmanager
async def lifespan(app: FastAPI):
    # One torch thread per uvicorn worker, as a Serve replica with num_cpus=1 gets.
    torch.set_num_threads(int(os.environ.get("RAYLANE_BENCH_THREADS", "1")))
    registry = open_registry(Storage.from_uri(None))
    state["predictor"] = Predictor.from_registry(registry, os.environ["RAYLANE_BENCH_MODEL"])
    state["stats"] = BatchStats()
    state["batcher"] = Batcher(
        run_batch,
        max_batch_size=int(os.environ.get("RAYLANE_BENCH_MAX_BATCH_SIZE", "32")),
        batch_wait_timeout_s=DEFAULTS["batch_wait_timeout_s"].default,
    )
    yield
    state["batcher"].close()
    state.clear()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/models/{name}:predict")
async def predict(name: str, request: Request) -> JSONResponse:
    predictor: Predictor = state["predictor"]
    try:
        instances = extract_instances(parse_json_body(await request.body()))
        rows = predictor.schema.parse(instances, max_instances=DEFAULTS["max_instances"].default)
        prediction = await state["batcher"].submit(rows)
        return JSONResponse(predictor.response(prediction))
    except RequestError as error:
        return JSONResponse({"error": str(error)}, status_code=error.status_code)


@app.get("/v1/models/{name}")
async def describe(name: str) -> dict:
    return {"stats": asdict(state["stats"])}


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}

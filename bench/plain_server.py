"""The plain-FastAPI baseline of the serving benchmark: the same `Predictor` behind FastAPI and
uvicorn, no Ray, no batching: what a user would write by hand.

    RAYLANE_BENCH_MODEL=bench-mlp:1 RAYLANE_STORAGE=s3://raylane-bench/serve \\
        uvicorn bench.plain_server:app --host 127.0.0.1 --port 8001 --workers 1

It answers the same route and body as raylane's Serve app (`POST /v1/models/NAME:predict`),
validates with the same schema code and predicts in the event loop (one forward pass per
request; with one torch thread a worker thread pool would only add switching).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cluster.storage import Storage
from serve.predictor import Predictor
from serve.schemas import RequestError, extract_instances, parse_json_body
from workloads.checkpoint import open_registry

MAX_INSTANCES = 256
state: dict = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    # One torch thread per uvicorn worker, as a Serve replica with num_cpus=1 gets.
    torch.set_num_threads(int(os.environ.get("RAYLANE_BENCH_THREADS", "1")))
    registry = open_registry(Storage.from_uri(None))
    state["predictor"] = Predictor.from_registry(registry, os.environ["RAYLANE_BENCH_MODEL"])
    yield
    state.clear()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/models/{name}:predict")
async def predict(name: str, request: Request) -> JSONResponse:
    predictor: Predictor = state["predictor"]
    try:
        instances = extract_instances(parse_json_body(await request.body()))
        body = predictor.predict_instances(instances, max_instances=MAX_INSTANCES)
        return JSONResponse(body)
    except RequestError as error:
        return JSONResponse({"error": str(error)}, status_code=error.status_code)


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}

"""The contenders of the serving benchmark (bench/serve.py) and how each is measured.

    ref = register_model(storage, [256, 256], 64)
    with plain_fastapi(storage, ref) as url, raylane_serve(storage, ref, port) as served:
        level = measure(url, Workload("c32", instances=1, concurrency=32), timing)
        level["raw_rows_per_s"] = RawForward(storage, ref).rows_per_s(level["batch_rows"])

Every contender answers the same routes and reports the same batch stats
(`GET /v1/models/NAME` -> `stats`), so one `measure` serves all: the stats before and after a
load level give the batch sizes that contender ran, on which the raw forward pass is then
measured in this process (`RawForward`): the limit for that contender, not one fixed sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

MODEL_NAME = "bench-mlp"
CLASSES = 10
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Workload:
    """One load level: `instances` rows per request, closed loop at `concurrency` clients
    (or an open loop at `rate` requests/s when rate > 0)."""

    label: str
    instances: int = 1
    concurrency: int = 1
    rate: float = 0.0


def register_model(storage, hidden: list[int], features: int) -> str:
    """A random-weight MLP saved as a raylane checkpoint and registered; returns NAME:VERSION."""
    from workloads.checkpoint import open_registry, save_checkpoint
    from workloads.config import ModelConfig
    from workloads.models import build_model, model_spec
    from workloads.trust import CodePolicy

    config = ModelConfig(family="mlp", hidden_sizes=hidden, dropout=0.0)
    spec = model_spec(config, input_shape=[features], num_classes=CLASSES)
    torch.manual_seed(0)
    meta = {
        "model": spec,
        "input": {
            "kind": "tabular",
            "shape": [features],
            "dtype": "float32",
            "class_names": [f"class_{i}" for i in range(CLASSES)],
            "vocab_size": None,
            "normalization": None,
            "feature_columns": ["features"],
            "label_column": "label",
            "label_encoding": "index",
        },
        "run_name": "bench-serve",
        "epoch": 0,
        "metrics": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model=build_model(spec, policy=CodePolicy.CONFIGURED), meta=meta)
        version = open_registry(storage).register(
            MODEL_NAME, tmp, lineage={"source": "bench.serve"}
        )
    return f"{MODEL_NAME}:{version}"


class RawForward:
    """`Predictor.predict` in this process, one torch thread: rows/s at a given batch size."""

    def __init__(self, storage, ref: str):
        from serve.predictor import Predictor
        from workloads.checkpoint import open_registry

        self.predictor = Predictor.from_registry(open_registry(storage), ref)
        self.rng = np.random.default_rng(0)

    def rows_per_s(self, batches: dict[int, int], seconds: float = 1.5) -> float:
        """Rows/s on a contender's own mix of batch sizes (rows -> batches run): each size's
        time per pass weighted by how often it ran. Not the mean batch size's: this forward pass
        runs 16 rows twice as fast per row as 15 here (oneDNN's blocking), so a mean of 15.6
        over batches of 16 and 8 would misstate the limit. The sizes that carried 95% of the
        rows are timed, at most 6, `seconds` in all."""
        total = sum(rows * count for rows, count in batches.items())
        chosen, covered = [], 0
        for rows in sorted(batches, key=lambda r: -r * batches[r]):
            if covered >= 0.95 * total or len(chosen) == 6:
                break
            chosen.append(rows)
            covered += rows * batches[rows]
        if not chosen:
            return float("nan")
        spent = sum(batches[r] * self.seconds_per_pass(r, seconds / len(chosen)) for r in chosen)
        return covered / spent

    def seconds_per_pass(self, rows: int, seconds: float) -> float:
        batch = self.rng.normal(size=(rows, self.predictor.schema.size)).astype(np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.predictor.predict(batch)  # warm
            passes, started = 0, time.perf_counter()
            while passes < 3 or time.perf_counter() - started < seconds:
                self.predictor.predict(batch)
                passes += 1
            return (time.perf_counter() - started) / passes
        finally:
            torch.set_num_threads(threads)


def batch_stats(url: str) -> dict:
    """The contender's batching record (GET /v1/models/NAME -> stats)."""
    import httpx

    return httpx.get(url.removesuffix(":predict"), timeout=30).json()["stats"]


def measure(url: str, workload: Workload, timing: dict, *, features: int) -> dict:
    """One load level against `url` (bench.loadgen in its own process), with the mean batch
    the contender ran meanwhile: requests and rows per batch."""
    before = batch_stats(url)
    level = loadgen(url, workload, features=features, **timing)
    after = batch_stats(url)
    batches = max(1, after["batches"] - before["batches"])
    level["requests_per_batch"] = (after["requests"] - before["requests"]) / batches
    level["rows_per_batch"] = (after["instances"] - before["instances"]) / batches
    level["batch_rows"] = {  # rows in a batch -> batches run during this level
        int(rows): count - before["batches_by_rows"].get(rows, 0)
        for rows, count in after["batches_by_rows"].items()
        if count > before["batches_by_rows"].get(rows, 0)
    }
    level["rows_per_s"] = level["requests_per_s"] * workload.instances
    return {"workload": workload.label, "instances": workload.instances, **level}


def loadgen(url: str, workload: Workload, *, features: int, duration: float,
            warmup: float) -> dict:  # fmt: skip
    """Run bench.loadgen in its own process (its CPU is not this process's) for one level."""
    rows = np.random.default_rng(1).normal(size=(workload.instances, features)).round(4)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"instances": rows.tolist()}, f)
    try:
        level = ["--rate", str(workload.rate), "--concurrency", ""]  # the open loop alone
        if not workload.rate:
            level = ["--concurrency", str(workload.concurrency)]
        command = [
            sys.executable, "-m", "bench.loadgen", "--url", url, "--body-file", f.name,
            *level, "--duration", str(duration), "--warmup", str(warmup),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             timeout=duration + warmup + 120)  # fmt: skip
        return json.loads(out.stdout)[0]
    finally:
        os.unlink(f.name)


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


@contextlib.contextmanager
def plain_fastapi(storage, ref: str, *, max_batch_size: int):
    """uvicorn running bench.plain_server with one worker; yields its predict URL."""
    from cluster.s3server import free_port

    port = free_port()
    env = {
        **os.environ,
        "RAYLANE_BENCH_MODEL": ref,
        "RAYLANE_BENCH_MAX_BATCH_SIZE": str(max_batch_size),
        "RAYLANE_STORAGE": storage.uri,
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "uvicorn", "bench.plain_server:app", "--host", HOST,
        "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    try:
        wait_http(f"http://{HOST}:{port}/healthz")
        yield f"http://{HOST}:{port}/v1/models/{MODEL_NAME}:predict"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def raylane_serve(storage, ref: str, port: int, *, max_batch_size: int, **settings):
    """raylane's Serve app (serve.app.build_app) on the running Serve instance; yields the
    predict URL on `port` (the proxy's, or the replica's own in direct-ingress mode).
    `settings`: more ServeArgs, e.g. an autoscaling_config."""
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app
    from serve.config import ServeArgs

    args = ServeArgs(
        model=ref,
        storage=storage.uri,
        max_batch_size=max_batch_size,
        max_ongoing_requests=64,
        num_cpus=1,
        num_replicas=1,
        api_key_env=None,
        watch_interval_s=0,
        **settings,
    )
    ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    try:
        wait_http(f"http://{HOST}:{port}/healthz")
        yield f"http://{HOST}:{port}/v1/models/{MODEL_NAME}:predict"
    finally:
        ray_serve.delete(APP_NAME)

"""Serving: raylane's Ray Serve app against the same Predictor behind plain FastAPI, and against
the raw in-process batched forward pass (the limit).

    python -m bench.serve            # about 3 minutes on 2 cores; writes bench/results/serve.json
    python -m bench.serve --quick    # a smoke-sized run

The model is an MLP with hidden sizes [6144, 6144, 6144] on 512 features (79M parameters,
random weights, saved as a raylane checkpoint and registered): a forward pass that is not
trivial, about 13 ms for one row and 80 ms for 32 on one core of this machine, so batching
has something to win (an MLP this wide reads all its weights per pass, whatever the rows).
A trivial model measures only HTTP plumbing; docs/performance.md has those numbers too. Every
server gets one core's worth: the Serve replica `num_cpus=1`, uvicorn one worker; each uses
one torch thread. Contenders, in this order:

- raw: `Predictor.predict` on batches of `max_batch_size` rows in this process; rows/s is the
  most requests/s any server of one-row requests could answer;
- FastAPI: `bench/plain_server.py` under uvicorn, no Ray;
- raylane Serve with batching (`max_batch_size` 32) and without (`max_batch_size` 1),
  through Serve's HTTP proxy (the default);
- raylane Serve with batching in Serve's throughput-optimized mode
  (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), requests sent to the replica's direct-ingress port, as
  an HAProxy in front of the replicas would (full run only);
- gRPC against HTTP on the batching app: the Open Inference Protocol v2's ModelInfer through
  Serve's gRPC proxy (`bench/grpc_load.py`) and v1 predict through its HTTP proxy, at the top
  concurrency, in interleaved pairs (HTTP, gRPC, HTTP, gRPC, ...) so drifts of the machine hit
  both alike; the row is the median of the pairs, the note their spread;
- scale to zero: the batching app with `min_replicas: 0`; once it has no replica, the seconds
  until a request is answered (a replica starting and loading the model), against a warm
  replica's p50 latency.

The load generator (`bench/loadgen.py`) is a separate process outside Ray: closed loops at
fixed concurrency levels, then an open loop at a fixed offered rate. Every request carries
one instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    RESULTS_DIR,
    Result,
    bench_main,
    bench_storage,
    equal_priority,
    median,
    start_ray,
)

MODEL_NAME = "bench-mlp"
HIDDEN, FEATURES, CLASSES = [6144, 6144, 6144], 512, 10
QUICK_HIDDEN, QUICK_FEATURES = [256, 256], 64  # --quick: a smoke test of the plumbing
MAX_BATCH_SIZE = 32
HOST = "127.0.0.1"
PROTOCOL_PAIRS = 3  # gRPC vs HTTP: interleaved repetitions


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


def raw_forward(storage, ref: str, *, batch: int, seconds: float) -> float:
    """Rows/s of Predictor.predict on `batch`-row inputs, one torch thread, in this process."""
    from serve.predictor import Predictor
    from workloads.checkpoint import open_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor = Predictor.from_registry(open_registry(storage), ref)
        features = predictor.schema.size
        rows = np.random.default_rng(0).normal(size=(batch, features)).astype(np.float32)
        for _ in range(5):
            predictor.predict(rows)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor.predict(rows)
            done += batch
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def load(url: str, *, features: int, levels: list[int], rate: float, duration: float,
         warmup: float) -> list:  # fmt: skip
    """Run bench.loadgen in its own process against `url`, one instance per request."""
    body = {"instances": [np.random.default_rng(1).normal(size=features).round(4).tolist()]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(body, f)
    try:
        command = [
            sys.executable, "-m", "bench.loadgen", "--url", url, "--body-file", f.name,
            "--concurrency", ",".join(map(str, levels)), "--rate", str(rate),
            "--duration", str(duration), "--warmup", str(warmup),
        ]  # fmt: skip
        budget = (len(levels) + 1) * (duration + warmup) + 120
        out = subprocess.run(command, capture_output=True, text=True, timeout=budget, check=True)
        return json.loads(out.stdout)
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
def plain_fastapi(storage, ref: str):
    """uvicorn running bench.plain_server with one worker; yields its predict URL."""
    from cluster.s3server import free_port

    port = free_port()
    env = {
        **os.environ,
        "RAYLANE_BENCH_MODEL": ref,
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


def grpc_load(target: str, *, features: int, concurrency: int, duration: float,
              warmup: float) -> dict:  # fmt: skip
    """Run bench.grpc_load in its own process: one closed-loop level of ModelInfer calls."""
    command = [
        sys.executable, "-m", "bench.grpc_load", "--target", target, "--model", MODEL_NAME,
        "--features", str(features), "--concurrency", str(concurrency),
        "--duration", str(duration), "--warmup", str(warmup),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 120,
                         check=True)  # fmt: skip
    return json.loads(out.stdout)[0]


def protocol_pairs(url: str, grpc_target: str, options: dict, repetitions: int) -> dict:
    """HTTP v1 and gRPC v2 at the top concurrency, alternating, `repetitions` times each."""
    top = options["levels"][-1]
    timing = {"duration": options["duration"], "warmup": options["warmup"]}
    pairs: dict = {"http": [], "grpc": []}
    for _ in range(repetitions):
        http_options = {**options, "levels": [top], "rate": 0}
        pairs["http"].append(load(url, **http_options)[0])
        pairs["grpc"].append(
            grpc_load(grpc_target, features=options["features"], concurrency=top, **timing)
        )
    return pairs


# Scale to zero with short delays, so the benchmark waits seconds, not minutes, for zero.
TO_ZERO = {"min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 1,
           "downscale_to_zero_delay_s": 1, "metrics_interval_s": 0.5, "look_back_period_s": 1}  # fmt: skip


def cold_starts(storage, ref: str, port: int, *, features: int, repetitions: int) -> list[float]:
    """Seconds from a request to its answer while the app has no replica (min_replicas 0):
    starting a replica and loading the model, as a client sees it."""
    import httpx

    from serve.app import APP_NAME
    from serve.scale_to_zero import replica_counts

    body = {"instances": [[0.0] * features]}
    seconds = []
    with raylane_serve(storage, ref, port, max_batch_size=MAX_BATCH_SIZE,
                       autoscaling_config=TO_ZERO) as url:  # fmt: skip
        for _ in range(repetitions):
            deadline = time.monotonic() + 120
            while replica_counts(APP_NAME) != (0, 0) and time.monotonic() < deadline:
                time.sleep(0.25)
            started = time.perf_counter()
            answer = httpx.post(url, json=body, timeout=300)
            seconds.append(time.perf_counter() - started)
            answer.raise_for_status()
    return seconds


def serve_loads(storage, ref: str, variants: dict[str, int], options: dict, *,
                direct_port: int | None = None, pairs: int = PROTOCOL_PAIRS) -> dict:  # fmt: skip
    """Start Ray and Serve (HTTP and gRPC proxies), load each variant (label ->
    max_batch_size) in turn; the batching one also gRPC against HTTP, `pairs` times."""
    from ray import serve as ray_serve

    from cluster.s3server import free_port
    from serve.grpc_proxy import serve_start_options

    start_ray()
    proxy_port, grpc_port = free_port(), free_port()
    ray_serve.start(**serve_start_options(host=HOST, port=proxy_port, grpc_port=grpc_port))
    measured = {}
    try:
        for label, batch in variants.items():
            print(f"[serve] raylane Serve, {label.replace('_', ' ')} ...", flush=True)
            port = direct_port or proxy_port
            with raylane_serve(storage, ref, port, max_batch_size=batch) as url:
                measured[label] = load(url, **options)
                if label == "batching" and not direct_port:
                    print("[serve] gRPC vs HTTP, interleaved ...", flush=True)
                    target = f"{HOST}:{grpc_port}"
                    measured["grpc_vs_http"] = protocol_pairs(url, target, options, pairs)
        if not direct_port and pairs > 1:  # not --quick: test_serve covers scale to zero
            print("[serve] cold starts from zero replicas ...", flush=True)
            measured["cold_start_s"] = cold_starts(
                storage, ref, proxy_port, features=options["features"], repetitions=pairs
            )
    finally:
        ray_serve.shutdown()
    return measured


def direct_ingress_loads(storage, ref: str, options: dict) -> dict:
    """The batching variant under Serve's throughput-optimized mode, in a fresh process (the
    mode is read from the environment when Ray starts): its direct ingress has the replica
    answer HTTP on its own port, the way an HAProxy in front of the replicas reaches them.
    The replica's port is the first of the range we give it."""
    from cluster.s3server import free_port

    port = free_port()
    env = {
        **os.environ,
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 100),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "direct.json"
        request = {"storage": storage.uri, "ref": ref, "port": port, "options": options}
        command = [sys.executable, "-m", "bench.serve", "--direct-ingress", json.dumps(request),
                   "--out", str(out)]  # fmt: skip
        subprocess.run(command, env=env, check=True, timeout=300)
        return json.loads(out.read_text())


def at(levels: list[dict], **where) -> dict:
    return next(x for x in levels if all(x.get(k) == v for k, v in where.items()))


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    levels = [1, 4] if quick else [1, 8, 32]
    top = levels[-1]
    rate = 20.0 if quick else 30.0  # FastAPI answers ~40 req/s with this model at best
    hidden, features = (QUICK_HIDDEN, QUICK_FEATURES) if quick else (HIDDEN, FEATURES)
    duration, warmup = (0.5, 0.2) if quick else (4.0, 1.0)
    result = Result("serve", quick=quick)
    result.settings = {
        "model": f"MLP {hidden} on {features} features, {CLASSES} classes, random weights",
        "instances_per_request": 1,
        "max_batch_size": MAX_BATCH_SIZE,
        "cpus_per_server": 1,
        "closed_loop_concurrency": levels,
        "open_loop_rate": rate,
        "seconds_per_level": duration,
    }
    measured: dict = {}
    with bench_storage("serve") as storage:
        ref = register_model(storage, hidden, features)
        print("[serve] raw batched forward ...", flush=True)
        raw = raw_forward(storage, ref, batch=MAX_BATCH_SIZE, seconds=0.3 if quick else 4.0)
        raw_single = raw_forward(storage, ref, batch=1, seconds=0.3 if quick else 2.0)
        measured["raw_rows_per_s"] = {f"batch {MAX_BATCH_SIZE}": raw, "batch 1": raw_single}

        options = dict(features=features, levels=levels, rate=rate, duration=duration,
                       warmup=warmup)  # fmt: skip  # noqa: C408
        print("[serve] plain FastAPI + uvicorn ...", flush=True)
        with plain_fastapi(storage, ref) as url:
            measured["fastapi"] = load(url, **options)
        variants = {"batching": MAX_BATCH_SIZE, "no_batching": 1}
        pairs = 1 if quick else PROTOCOL_PAIRS  # --quick (and the test tier) checks plumbing
        measured |= serve_loads(storage, ref, variants, options, pairs=pairs)
        if not quick:
            print("[serve] raylane Serve, throughput-optimized (direct ingress) ...", flush=True)
            measured |= direct_ingress_loads(storage, ref, options)

    result.measurements = measured
    fastapi = at(measured["fastapi"], concurrency=top)["requests_per_s"]
    for label, name in (("batching", "Serve (batching)"), ("direct_batching", "Serve direct "
                        "ingress (batching)")):  # fmt: skip
        if label not in measured:
            continue
        served = at(measured[label], concurrency=top)["requests_per_s"]
        result.ratio(
            f"serve_{label}_vs_fastapi",
            f"requests/s at concurrency {top}: {name} vs plain FastAPI",
            raylane=served,
            baseline=fastapi,
            unit="req/s",
            goal=">= 1.0",
        )
        result.ratio(
            f"serve_{label}_vs_raw_forward",
            f"requests/s at concurrency {top}: {name} vs raw batched forward",
            raylane=served,
            baseline=raw,
            unit="req/s",
            goal=">= 0.7",
        )
    result.ratio(
        "serve_no_batching_vs_fastapi",
        f"requests/s at concurrency {top}: Serve (no batching) vs plain FastAPI",
        raylane=at(measured["no_batching"], concurrency=top)["requests_per_s"],
        baseline=fastapi,
        unit="req/s",
    )
    pairs = measured["grpc_vs_http"]
    rates = {k: [level["requests_per_s"] for level in pairs[k]] for k in ("grpc", "http")}
    spread = ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in rates.items())
    result.ratio(
        "serve_grpc_vs_http",
        f"requests/s at concurrency {top}: gRPC v2 ModelInfer vs HTTP v1 predict (Serve, "
        f"batching), median of {len(rates['grpc'])} interleaved pairs",
        raylane=median(rates["grpc"]),
        baseline=median(rates["http"]),
        unit="req/s",
        note=f"spread (min-max req/s): {spread}",
    )
    cold = measured.get("cold_start_s", [])
    warm_s = at(measured["batching"], concurrency=1)["p50_ms"] / 1000
    result.ratio(
        "serve_cold_start",
        "seconds to answer a request at zero replicas (scale to zero) vs a warm replica's p50",
        raylane=median(cold),
        baseline=warm_s,
        unit="s",
        note=f"cold starts (s): {', '.join(f'{s:.1f}' for s in cold)}"
        if cold
        else "not in --quick",
    )
    result.ratio(
        "serve_latency_c1",
        "p50 latency at concurrency 1: Serve (batching) vs plain FastAPI",
        raylane=at(measured["batching"], concurrency=1)["p50_ms"],
        baseline=at(measured["fastapi"], concurrency=1)["p50_ms"],
        unit="ms",
    )
    result.ratio(
        "serve_open_loop_p99",
        f"p99 latency, open loop at {rate:.0f} req/s: Serve (batching) vs plain FastAPI",
        raylane=at(measured["batching"], mode="open")["p99_ms"],
        baseline=at(measured["fastapi"], mode="open")["p99_ms"],
        unit="ms",
    )
    result.write(out_dir)
    return result


def direct_ingress_child(argv: list[str]) -> int:
    """The child process of direct_ingress_loads: --direct-ingress JSON --out PATH."""
    import argparse

    from cluster.storage import Storage

    parser = argparse.ArgumentParser(prog="python -m bench.serve --direct-ingress")
    parser.add_argument("--direct-ingress", required=True, metavar="JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    equal_priority()
    request = json.loads(args.direct_ingress)
    measured = serve_loads(Storage(request["storage"]), request["ref"],
                           {"direct_batching": MAX_BATCH_SIZE}, request["options"],
                           direct_port=request["port"])  # fmt: skip
    args.out.write_text(json.dumps(measured))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--direct-ingress"]:
        return direct_ingress_child(argv)
    return bench_main("serve", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""The serving benchmark's rows beside throughput (bench/serve.py, phase one): gRPC against HTTP,
and the cold start from zero replicas.

    pairs = protocol_pairs(url, "127.0.0.1:9000", options, concurrency=32)
    seconds = cold_starts(storage, ref, proxy_port, features=512, repetitions=3, max_batch_size=32)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.serve_servers import MODEL_NAME, Workload, loadgen, raylane_serve

# Scale to zero with short delays, so the benchmark waits seconds, not minutes, for zero.
TO_ZERO = {"min_replicas": 0, "max_replicas": 1, "downscale_delay_s": 1,
           "downscale_to_zero_delay_s": 1, "metrics_interval_s": 0.5, "look_back_period_s": 1}  # fmt: skip


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


def protocol_pairs(url: str, grpc_target: str, options: dict, *, concurrency: int) -> dict:
    """HTTP v1 and gRPC v2, one-row requests at `concurrency`, alternating, once per
    repetition each."""
    timing = {"duration": options["duration"], "warmup": options["warmup"]}
    workload = Workload(f"1 row, c={concurrency}", concurrency=concurrency)
    pairs: dict = {"http": [], "grpc": []}
    for _ in range(options["repetitions"]):
        pairs["http"].append(loadgen(url, workload, features=options["features"], **timing))
        pairs["grpc"].append(
            grpc_load(
                grpc_target, features=options["features"], concurrency=concurrency, **timing
            )  # fmt: skip
        )
    return pairs


def cold_starts(storage, ref: str, port: int, *, features: int, repetitions: int,
                max_batch_size: int) -> list[float]:  # fmt: skip
    """Seconds from a request to its answer while the app has no replica (min_replicas 0):
    starting a replica and loading the model, as a client sees it."""
    import httpx

    from serve.app import APP_NAME
    from serve.scale_to_zero import replica_counts

    body = {"instances": [[0.0] * features]}
    seconds = []
    with raylane_serve(storage, ref, port, max_batch_size=max_batch_size,
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

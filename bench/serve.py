"""Serving: raylane's Ray Serve app against plain FastAPI running the same Batcher and Predictor,
each beside the raw in-process forward pass on the batches it ran.

    python -m bench.serve            # about 7 minutes on 2 cores; writes bench/results/serve.json
    python -m bench.serve --quick    # a smoke-sized run of every code path but the second phase

The model is an MLP with hidden sizes [6144, 6144, 6144] on 512 features (79M parameters,
random weights, saved as a raylane checkpoint and registered): about 13 ms for one row and
80 ms for 32 on one core of this machine, so batching has something to win. Every server gets
one core's worth (the Serve replica `num_cpus=1`, uvicorn one worker) and one torch thread, and
batches with serve/batching.py's Batcher (max_batch_size 32, the same wait timeout):

- FastAPI: `bench/plain_server.py` under uvicorn, no Ray: what Ray adds is the difference;
- Serve: raylane's app (`serve.app.build_app`) through Serve's HTTP proxy (the default);
- Serve, direct ingress: the same app in Serve's throughput-optimized mode
  (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), requests sent to the replica's own HTTP port, as an
  HAProxy in front of the replicas would; a second phase in a fresh Ray (full run only);
- raw: `Predictor.predict` in this process on the batch sizes the contender just ran (its
  batch stats count batches by rows), timed right after that level: the most rows/s any
  server running those batches could answer (bench/serve_servers.py, RawForward).

Pairs are interleaved: each load level runs on both contenders of a phase back to back (A B,
then B A in the next repetition), `REPETITIONS` times, so drifts of the shared machine hit
both; rows report the medians and the spread (min-max). Load levels (`bench/loadgen.py`, its own
process, counting completions inside the measured window): one-row requests at 1 and 32
clients, requests of 8 rows at 4 clients and of 32 rows at 2, an open loop at 30 requests/s.
Also (phase one): gRPC v2 ModelInfer against HTTP v1 in interleaved pairs, and the cold start
from zero replicas (scale to zero) against a warm replica's p50.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS_DIR, Result, bench_main, bench_storage, equal_priority, start_ray
from bench.serve_extras import cold_starts, protocol_pairs
from bench.serve_report import detail_table, report
from bench.serve_servers import (
    HOST,
    RawForward,
    Workload,
    measure,
    plain_fastapi,
    raylane_serve,
    register_model,
)

HIDDEN, FEATURES = [6144, 6144, 6144], 512
QUICK_HIDDEN, QUICK_FEATURES = [256, 256], 64  # --quick: a smoke test of the plumbing
MAX_BATCH_SIZE = 32
REPETITIONS = 3
WORKLOADS = [
    Workload("1 row, c=1", concurrency=1),
    Workload("1 row, c=32", concurrency=32),
    Workload("8 rows, c=4", instances=8, concurrency=4),
    Workload("32 rows, c=2", instances=32, concurrency=2),
    Workload("1 row, open loop 30/s", rate=30.0),
]
QUICK_WORKLOADS = [  # every code path once: closed loop, many rows, open loop
    Workload("1 row, c=4", concurrency=4),
    Workload("8 rows, c=2", instances=8, concurrency=2),
    Workload("1 row, open loop 20/s", rate=20.0),
]
# the target's level, and many rows per request
DIRECT_WORKLOADS = [w for w in WORKLOADS if w.label in ("1 row, c=32", "8 rows, c=4")]


def interleaved(contenders: dict[str, str], workloads: list[Workload], *, repetitions: int,
                raw: RawForward, timing: dict, features: int) -> dict:  # fmt: skip
    """{contender: {workload: [level per repetition]}}, the contenders alternating per level.
    A batching level (more than one request or row at once) also gets the raw forward pass's
    rows/s on the very batch sizes the contender ran (RawForward.rows_per_s)."""
    measured: dict = {name: {w.label: [] for w in workloads} for name in contenders}
    for repetition in range(repetitions):
        order = list(contenders) if repetition % 2 == 0 else list(reversed(contenders))
        for workload in workloads:
            for name in order:
                print(
                    f"[serve] {repetition + 1}/{repetitions} {workload.label}: {name}", flush=True
                )
                level = measure(contenders[name], workload, timing, features=features)
                if workload.concurrency > 1 or workload.instances > 1:
                    level["raw_rows_per_s"] = raw.rows_per_s(level["batch_rows"])
                measured[name][workload.label].append(level)
    return measured


def phase(storage, ref: str, *, serve_label: str, workloads: list[Workload], options: dict,
          direct_port: int | None = None, extras: bool = False) -> dict:  # fmt: skip
    """Start Ray and Serve (HTTP and gRPC proxies), deploy the app, start the FastAPI baseline,
    measure them interleaved; with `extras`, gRPC vs HTTP and (full run) cold starts too."""
    from ray import serve as ray_serve

    from cluster.s3server import free_port
    from serve.grpc_proxy import serve_start_options

    start_ray()
    proxy_port, grpc_port = free_port(), free_port()
    ray_serve.start(**serve_start_options(host=HOST, port=proxy_port, grpc_port=grpc_port))
    raw = RawForward(storage, ref)
    timing = {"duration": options["duration"], "warmup": options["warmup"]}
    measured: dict = {}
    try:
        with (
            raylane_serve(storage, ref, direct_port or proxy_port,
                          max_batch_size=MAX_BATCH_SIZE) as served,
            plain_fastapi(storage, ref, max_batch_size=MAX_BATCH_SIZE) as fastapi,
        ):  # fmt: skip
            contenders = {serve_label: served, "fastapi": fastapi}
            measured["levels"] = interleaved(contenders, workloads, raw=raw, timing=timing,
                                             repetitions=options["repetitions"],
                                             features=options["features"])  # fmt: skip
            if extras:
                print("[serve] gRPC vs HTTP, interleaved ...", flush=True)
                measured["grpc_vs_http"] = protocol_pairs(
                    served, f"{HOST}:{grpc_port}", options, concurrency=MAX_BATCH_SIZE
                )
        if extras and options["repetitions"] > 1:  # not --quick: test_serve covers it
            print("[serve] cold starts from zero replicas ...", flush=True)
            measured["cold_start_s"] = cold_starts(
                storage, ref, proxy_port, features=options["features"],
                repetitions=options["repetitions"], max_batch_size=MAX_BATCH_SIZE,
            )  # fmt: skip
    finally:
        ray_serve.shutdown()
    return measured


def direct_ingress_phase(storage, ref: str, options: dict) -> dict:
    """`phase` in a fresh process under Serve's throughput-optimized mode (read from the
    environment when Ray starts): its direct ingress has the replica answer HTTP on its own
    port, the first of the range we give it."""
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
        subprocess.run(command, env=env, check=True, timeout=600)
        return json.loads(out.read_text())


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    hidden, features = (QUICK_HIDDEN, QUICK_FEATURES) if quick else (HIDDEN, FEATURES)
    options = {
        "features": features,
        "repetitions": 1 if quick else REPETITIONS,
        "duration": 0.5 if quick else 3.0,
        "warmup": 0.2 if quick else 1.0,
    }
    workloads = QUICK_WORKLOADS if quick else WORKLOADS
    result = Result("serve", quick=quick)
    result.settings = {
        "model": f"MLP {hidden} on {features} features, 10 classes, random weights",
        "max_batch_size": MAX_BATCH_SIZE,
        "cpus_per_server": 1,
        "workloads": [w.label for w in workloads],
        **options,
    }
    with bench_storage("serve") as storage:
        ref = register_model(storage, hidden, features)
        measured = {
            "proxy": phase(
                storage, ref, serve_label="serve", workloads=workloads, options=options, extras=True
            )  # fmt: skip
        }
        if not quick:
            print("[serve] phase two: throughput-optimized, direct ingress ...", flush=True)
            measured["direct"] = direct_ingress_phase(storage, ref, options)
    result.measurements = measured
    report(result, workloads)
    print(detail_table(measured), flush=True)
    result.write(out_dir)
    return result


def direct_ingress_child(argv: list[str]) -> int:
    """The child process of direct_ingress_phase: --direct-ingress JSON --out PATH."""
    import argparse

    from cluster.storage import Storage

    parser = argparse.ArgumentParser(prog="python -m bench.serve --direct-ingress")
    parser.add_argument("--direct-ingress", required=True, metavar="JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    equal_priority()
    request = json.loads(args.direct_ingress)
    measured = phase(Storage(request["storage"]), request["ref"], serve_label="direct",
                     workloads=DIRECT_WORKLOADS, options=request["options"],
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

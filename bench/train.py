"""Training overhead: a raylane (Ray Train) epoch against a plain PyTorch loop and plain DDP.

    python -m bench.train            # about 3 minutes on 2 cores; writes bench/results/train.json
    python -m bench.train --quick    # a smoke-sized run

The workload is the `tabular-mlp` preset on `synthetic-tabular` (200,000 rows, 4 epochs):
its small MLP and batch of 32 make the per-batch cost of the data pipeline visible, which is
where a framework loses to a hand-written loop. All three contenders run the same model, the
same `train_step` and optimizer, one torch thread per process, on the same training rows:

- plain loop: one process, the training split as tensors in memory, a random permutation
  per epoch, batches by indexing;
- plain DDP: `torch.distributed` (gloo) with the same number of processes as raylane has
  workers, each on its half of the rows;
- raylane: `workloads.train.run_training` (Ray Data from Parquet on SeaweedFS, Ray Train
  workers, a report and a checkpoint every epoch), 1 worker and 2 workers. Its first epoch
  streams from Ray Data; later ones use each worker's shard kept in memory
  (`train.cache_shard_mb`), which is why the first epoch is left out (see below).

Throughput is training samples/s of steady-state epochs (the first is left out: start-up,
warm-up). Beside it, what a user waits for: seconds to all epochs with start-up included, Ray's
start and `run_training` against reading the same Parquet into tensors and the baseline's
epochs. Each baseline runs right before and right after the raylane run it is compared
with, so that other load on the machine during the run weighs on both sides alike. The
checkpoint's cost is timed on the worker: `checkpoint_s`, rank 0's time from the end of
evaluation to handing the epoch's metrics over (writing the checkpoint and, with the default
sync upload, uploading it), over the epoch's own train+validation time (`epoch_s`).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from ray.train import UserCallback

from bench.common import (
    RESULTS_DIR,
    Result,
    bench_main,
    bench_storage,
    median,
    start_ray,
)
from cluster.runtime import JOB_ENV_VARS

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
THREADS = 1  # raylane gives a worker with < 2 CPUs one torch thread (workloads/worker.py)
VALIDATION_FRACTION = 0.2


def job_config(*, rows: int, epochs: int, workers: int, checkpoint_every: int, tag: str):
    from workloads.config import load_job_config

    return load_job_config(
        "tabular-mlp",
        [
            # A fresh name per run: re-running a finished name would resume, not train.
            f"name=bench-{tag}-{uuid.uuid4().hex[:6]}",
            "data.dataset=synthetic-tabular",
            f"data.rows={rows}",
            f"data.validation_fraction={VALIDATION_FRACTION}",
            f"train.epochs={epochs}",
            f"train.num_workers={workers}",
            # Two workers at 0.75 leave half a core of Ray resources for Ray Data tasks;
            # either way a worker gets one torch thread, like the baselines.
            f"train.cpus_per_worker={1.0 if workers == 1 else 0.75}",
            f"train.checkpoint_every={checkpoint_every}",
        ],
    )


# ---------------------------------------------------------------------- the same rows, in memory


def training_rows(storage, config) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(model spec, features, labels) of the training split, normalized as raylane does."""
    spec, _, _, features, labels = training_set(storage, config)
    return spec, features, labels


def training_set(storage, config):
    """(model spec, input spec, dataset info, features, labels): the training split prepared
    as raylane's workers see it, and the input spec (with normalization) its checkpoint keeps."""
    import dataclasses

    from workloads import data
    from workloads.checkpoint import prepare_features
    from workloads.models import model_spec

    info = data.resolve(config.data, storage)
    features, labels = data.read_split(
        info.uri,
        info.input_spec(),
        validation_fraction=config.data.validation_fraction,
        split="train",
    )
    # The same moments as data.check_and_normalize, without Ray (one pair for images).
    x = features.astype(np.float64)
    x = x.reshape(-1, 1) if info.kind == "image" else x
    mean, std = x.mean(0), x.std(0)
    normalization = {"mean": mean.tolist(), "std": np.where(std < 1e-6, 1.0, std).tolist()}
    input_spec = dataclasses.replace(info.input_spec(), normalization=normalization)
    spec = model_spec(config.model, input_shape=info.feature_shape, num_classes=info.num_classes)
    prepared = torch.as_tensor(prepare_features(features, input_spec))
    return spec, input_spec, info, prepared, torch.as_tensor(labels)


def train_epochs(model, features, labels, train_config, *, epochs: int, barrier=None):
    """Plain epochs: permutation, index, step. Returns [(seconds, samples)] per epoch."""
    from workloads.step import train_step
    from workloads.worker import make_optimizer

    optimizer = make_optimizer(model, train_config)
    generator = torch.Generator().manual_seed(0)
    batch = train_config.batch_size
    timings = []
    for _ in range(epochs):
        if barrier:
            barrier()
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            train_step(model, features[index], labels[index], optimizer)
        if barrier:
            barrier()
        timings.append((time.perf_counter() - started, len(labels)))
    return timings


def plain_loop(spec, features, labels, train_config, *, epochs: int) -> list[float]:
    from workloads.models import build_model
    from workloads.trust import CodePolicy

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        torch.manual_seed(0)
        timings = train_epochs(
            build_model(spec, policy=CodePolicy.CONFIGURED),
            features,
            labels,
            train_config,
            epochs=epochs,
        )
    finally:
        torch.set_num_threads(threads)
    return [samples / seconds for seconds, samples in timings]


def _ddp_rank(rank, world, port, spec, features, labels, train_config, epochs, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from workloads.models import build_model
    from workloads.trust import CodePolicy

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    model = DistributedDataParallel(build_model(spec, policy=CodePolicy.CONFIGURED))
    shard = slice(rank, None, world)  # equal halves, as Ray Data's split gives each worker
    timings = train_epochs(
        model, features[shard], labels[shard], train_config, epochs=epochs, barrier=dist.barrier
    )
    if rank == 0:
        Path(out).write_text(json.dumps([world * s / t for t, s in timings]))
    dist.destroy_process_group()


def plain_ddp(spec, features, labels, train_config, *, epochs: int, world: int) -> list[float]:
    import torch.multiprocessing as mp

    from cluster.s3server import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        args = (world, free_port(), spec, features, labels, train_config, epochs, out)
        mp.spawn(_ddp_rank, args=args, nprocs=world, join=True)
        return json.loads(Path(out).read_text())


# ---------------------------------------------------------------------- raylane


class ReportTimes(UserCallback):
    """Runs in the Train controller: appends (time, rank 0 metrics) of each report to a file
    on this machine (the benchmark runs a local Ray)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        line = {"time": time.time(), "checkpoint": "checkpoint_path" in metrics[0], **metrics[0]}
        with open(self.path, "a") as f:
            f.write(json.dumps(line, default=float) + "\n")


def raylane_run(storage, config) -> list[dict]:
    """Train with raylane; per epoch: samples_per_s, epoch_s, and the report-to-report cycle."""
    from workloads.train import run_training

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reports.jsonl")
        run_training(config, storage, callbacks=[ReportTimes(path)], verbose=False)
        reports = [json.loads(line) for line in Path(path).read_text().splitlines()]
    for previous, report in zip(reports, reports[1:], strict=False):
        report["cycle_s"] = report["time"] - previous["time"]
    return reports


def steady(reports: list[dict], key: str, *, skip_last: bool = False) -> float:
    """Median of `key` over the epochs after the first (and before the last, if asked)."""
    chosen = reports[1:-1] if skip_last else reports[1:]
    return median(r[key] for r in chosen if key in r)


# ---------------------------------------------------------------------- the benchmark


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    # Quick: 1 worker against a plain loop and a 1-process DDP, one raylane run for both.
    # Four epochs: the median of three steady-state ones shrugs off one slow epoch, which on
    # this shared 2-core machine comes often (43k between two 56k epochs in one run).
    rows, epochs, world = (4_000, 2, 1) if quick else (200_000, 4, 2)
    result = Result("train", quick=quick)
    with bench_storage("train") as storage:
        single = job_config(rows=rows, epochs=epochs, workers=1, checkpoint_every=1, tag="1w")
        read_started = time.monotonic()
        spec, features, labels = training_rows(storage, single)
        read_s = time.monotonic() - read_started
        result.settings = {
            "preset": "tabular-mlp",
            "dataset": f"synthetic-tabular, {rows} rows ({len(labels)} for training)",
            "model": spec,
            "batch_size": single.train.batch_size,
            "epochs": epochs,
            "torch_threads_per_process": THREADS,
            "train_poll_interval_s": os.environ.get(POLL, JOB_ENV_VARS[POLL]),
        }
        args = (spec, features, labels, single.train)
        plain = functools.partial(plain_loop, *args, epochs=epochs)
        ddp = functools.partial(plain_ddp, *args, epochs=epochs, world=world)
        ray_started = time.monotonic()
        start_ray()
        ray_start_s = time.monotonic() - ray_started
        # Quick: the single-worker run stands in for the DDP comparison too.
        multi = single
        if world > 1:
            multi = job_config(rows=rows, epochs=epochs, workers=world, checkpoint_every=1,
                               tag=f"{world}w")  # fmt: skip
        pairs = {"plain loop": (plain, single), f"plain DDP x{world}": (ddp, multi)}
        measured = {}
        for name, (baseline, config) in pairs.items():
            first = measured.get("plain loop")
            reuse = (first["raylane"], first["raylane_s"]) if config is single and first else None
            measured[name] = bracketed(name, baseline, storage, config, reuse=reuse)

    result.measurements = measured
    for key, name in zip(("train_vs_plain_loop", "train_vs_plain_ddp"), measured, strict=True):
        pair = measured[name]
        result.ratio(
            key,
            f"training samples/s, {pair['workers']} worker(s) vs {name}",
            raylane=steady(pair["raylane"], "samples_per_s"),
            baseline=median(pair["before"][1:] + pair["after"][1:]),
            unit="samples/s",
            goal=">= 0.95",
            note=f"load average {pair['load_average']}",
        )
    for key, name in zip(("end_to_end_vs_plain_loop", "end_to_end_vs_plain_ddp"), measured,
                         strict=True):  # fmt: skip
        pair = measured[name]
        result.ratio(
            key,
            f"seconds to {epochs} epochs with start-up, {pair['workers']} worker(s) vs {name}",
            raylane=ray_start_s + pair["raylane_s"],
            baseline=read_s + median(pair["baseline_s"]),
            unit="s",
            note="raylane: Ray's start, Ray Data from Parquet, workers, a validation pass and a "
            "checkpoint every epoch; the baseline: reading the same Parquet into tensors, then "
            "its epochs (no validation, no checkpoint)",
        )
    reports = measured["plain loop"]["raylane"]
    result.ratio(
        "report_checkpoint_cost",
        "checkpoint time / epoch time, timed on the worker (1 worker)",
        raylane=steady(reports, "checkpoint_s"),
        baseline=steady(reports, "epoch_s"),
        unit="s",
        goal="<= 0.05",
    )
    result.write(out_dir)
    return result


def bracketed(name: str, baseline, storage, config, *, reuse: tuple | None = None) -> dict:
    """The baseline's epochs right before and right after raylane's run, so a change in the
    machine's load during the run shows on both sides (the baseline is the median of both)."""
    load = [round(os.getloadavg()[0], 1)]
    print(f"[train] {name} ...", flush=True)
    before, before_s = timed(baseline)
    if reuse is None:
        print(f"[train] raylane, {config.train.num_workers} worker(s) ...", flush=True)
        raylane, raylane_s = timed(functools.partial(raylane_run, storage, config))
        load.append(round(os.getloadavg()[0], 1))
        print(f"[train] {name} again ...", flush=True)
        after, after_s = timed(baseline)
        baseline_s = [before_s, after_s]
    else:
        (raylane, raylane_s), after, baseline_s = reuse, [], [before_s]
    load.append(round(os.getloadavg()[0], 1))
    return {"before": before, "after": after, "raylane": raylane, "load_average": load,
            "workers": config.train.num_workers, "raylane_s": raylane_s,
            "baseline_s": baseline_s}  # fmt: skip


def timed(call):
    """(call(), its wall seconds)."""
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def main(argv=None) -> int:
    return bench_main("train", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

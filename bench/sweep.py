"""Sweeps: ASHA against random search on 27 configurations and several seeds; trials that train
inside the Tune trial against trials that fit a TorchTrainer, and against their compute limit.

    python -m bench.sweep                  # ~8 minutes on 2 cores; writes bench/results/sweep.json
    python -m bench.sweep --quick          # a smoke-sized run: every code path once
    python -m bench.sweep --only asha --seeds 1 --first-seed 1   # one piece (or: --only modes)
    python -m bench.sweep --only modes --repeats 1

- ASHA vs random search: bench/sweep_asha.py (27 configurations of a digits MLP, 3 seeds by
  default, the two searchers interleaved; time to an accuracy both reach, median and spread).
- Trial modes: the `digits-sweep` preset (8 configs, MODE_EPOCHS epochs each as in `make
  demo`, no early stopping, so both do the same work) with `trial_mode=trainer` and `in_trial`,
  interleaved (A B A B ...) `--repeats` times, wall time from before the data is read until
  `fit()` returns; median and spread (min-max). Beside it the compute limit: the in-trial
  sweeps' summed epoch times (train + evaluation, as the workers time them) / concurrent
  trials, plus one process start (a Python that imports the worker's modules). Where the rest
  of an in-trial sweep goes (data preparation, Tune's start, per-trial set-up, checkpoints) is
  kept in the measurements (bench/sweep_timing.py).

A full run starts with one uncounted in-trial sweep of one configuration: a fresh Ray's first
sweep pays ~5 s more (Ray Data's first read, Tune's first trial processes), which would
otherwise fall on whichever searcher or mode happened to run first.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import RESULTS_DIR, Result, bench_main, bench_storage, median, start_ray
from bench.sweep_asha import asha_vs_random
from bench.sweep_timing import timed_sweep

MODE_EPOCHS, MODE_REPEATS, SEEDS = 8, 3, 3


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR, parts=("asha", "modes"),
        seeds: list[int] | None = None, repeats: int = MODE_REPEATS) -> Result:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    result = Result("sweep", quick=quick)
    with bench_storage("sweep") as storage:
        start_ray()
        if not quick:  # a fresh Ray's first sweep paid ~5 s more (Ray Data's first read, Tune)
            timed_sweep(storage, mode_sweep("in_trial", quick=True, name=f"bench-warmup-{tag}"))
        if "asha" in parts:
            seeds = [0] if quick else (seeds or list(range(SEEDS)))
            asha_vs_random(result, storage, quick=quick, tag=tag, seeds=seeds)
        if "modes" in parts:
            trial_modes(result, storage, quick=quick, tag=tag, repeats=1 if quick else repeats)
    result.write(out_dir)
    return result


def trial_modes(result: Result, storage, *, quick: bool, tag: str, repeats: int) -> None:
    """The same sweep with trials in Ray Train and inside the Tune trial, interleaved."""
    runs = {"trainer": [], "in_trial": []}
    for repeat in range(repeats):
        for mode in runs:  # A B A B ...: both see the same machine, warm or not
            sweep = mode_sweep(mode, quick=quick, name=f"bench-{mode}-{repeat}-{tag}")
            print(f"[sweep] {sweep.name}: {sweep.num_samples} trials, {mode} ...", flush=True)
            timed = timed_sweep(storage, sweep)
            # The configured limit: two trials at once, one per core.
            timed["concurrency"] = sweep.max_concurrent_trials
            runs[mode].append({k: v for k, v in timed.items() if k != "events"})
    walls = {mode: [r["wall_s"] for r in done] for mode, done in runs.items()}
    start = process_start_s()
    compute = median([r["epoch_s"] / r["concurrency"] for r in runs["in_trial"]]) + start
    result.measurements["trial_modes"] = {**runs, "process_start_s": start}
    samples, epochs = sweep.num_samples, sweep.scheduler.max_epochs
    result.settings["trial_modes"] = f"digits-sweep x {samples} trials, {epochs} epochs, FIFO"
    spread = {mode: f"{min(w):.1f}-{max(w):.1f} s" for mode, w in walls.items()}
    result.ratio(
        "in_trial_vs_trainer",
        f"sweep wall time incl. data prep, {samples} configs x {epochs} epochs: in-trial vs "
        f"Ray Train trials (median of {repeats})",
        raylane=median(walls["in_trial"]), baseline=median(walls["trainer"]), unit="s",
        goal="<= 0.25", note=f"spread in_trial {spread['in_trial']}, trainer {spread['trainer']}",
    )  # fmt: skip
    result.ratio(
        "in_trial_vs_compute_limit",
        "in-trial sweep wall time vs its compute limit (sum of epoch times / concurrency + one "
        "process start)",
        raylane=median(walls["in_trial"]), baseline=compute, unit="s", goal="<= 2",
    )  # fmt: skip


def mode_sweep(mode: str, *, quick: bool, name: str):
    """`digits-sweep` without early stopping; quick: one config of one epoch (the trainer
    mode's ~20 s of start-up per trial was most of the smoke test)."""
    from tune.config import load_sweep_config

    samples, epochs = (1, 1) if quick else (8, MODE_EPOCHS)
    return load_sweep_config("digits-sweep", [
        f"name={name}", f"num_samples={samples}", "seed=7", f"trial_mode={mode}",
        "scheduler.asha=false", f"scheduler.max_epochs={epochs}", "max_concurrent_trials=2",
    ])  # fmt: skip


def process_start_s() -> float:
    """A fresh Python importing what a trial process imports: the floor of any trial's start."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import workloads.worker, ray.tune"], check=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--only", choices=["asha", "modes"])
    parser.add_argument("--seeds", type=int, default=SEEDS, help="ASHA vs random: seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="to run the seeds in pieces")
    parser.add_argument("--repeats", type=int, default=MODE_REPEATS, help="trial-mode pairs")
    known, rest = parser.parse_known_args(argv)
    parts = (known.only,) if known.only else ("asha", "modes")
    seeds = list(range(known.first_seed, known.first_seed + known.seeds))
    job = functools.partial(run, parts=parts, seeds=seeds, repeats=known.repeats)
    return bench_main("sweep", job, __doc__, rest)


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweeps: ASHA against random search without early stopping, on the same sampled configs;
trials that train inside the Tune trial against trials that fit a TorchTrainer.

    python -m bench.sweep                # 10-15 minutes on 2 cores; writes bench/results/sweep.json
    python -m bench.sweep --quick        # a smoke-sized run
    python -m bench.sweep --only modes   # only the trial-mode rows (or: --only asha)

Both sweeps are `tune.sweep.build_tuner(...).fit()` on the `digits-sweep` preset (4 trials of
up to 6 epochs, to fit the time budget) with the same seed, so Tune's BasicVariantGenerator samples the same configurations in the same order; one
runs ASHA, the other FIFO (every trial to the last epoch). Measured:

- time to target: seconds from the start of `fit()` until some trial first reports a score
  within EPSILON of the best score of the random search (which trains every config fully),
  and the epochs trained by all trials until then;
- Tune's overhead: sweep wall time over (sum of trial times / concurrent trials).
- trial modes: the `digits-sweep` preset (8 configs, MODE_EPOCHS epochs each, no early
  stopping, so both do the same work) with `trial_mode=trainer` and `in_trial`, interleaved
  (A B A B ...) MODE_REPEATS times, wall time from before the data is read until `fit()`
  returns; median and spread (min-max). Beside it the compute limit: the in-trial sweeps'
  summed epoch times (train + evaluation, as the workers time them) / concurrent trials, plus
  one process start (a Python that imports the worker's modules).

When each epoch was reported comes from Tune's own per-result fields: `time_total_s` (since
the trial started, exact) and `timestamp` (whole seconds), which pin down a trial's start to
within a second.
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    Result,
    bench_main,
    bench_storage,
    median,
    start_ray,
)

EPSILON = 0.005  # "within half a point of accuracy of the best"
MODE_EPOCHS, MODE_REPEATS = 3, 3


def sweep_config(*, quick: bool, asha: bool, tag: str):
    from tune.config import load_sweep_config

    if quick:
        # One trial each: a trial's ~30 s of start-up is most of a smoke test's budget.
        preset, overrides = "debug-sweep", ["num_samples=1", "scheduler.max_epochs=2"]
    else:  # four trials of six epochs: two waves of two trials on 2 cores
        preset, overrides = "digits-sweep", ["num_samples=4", "scheduler.max_epochs=6"]
    return load_sweep_config(
        preset,
        [
            *overrides,
            f"name=bench-{'asha' if asha else 'random'}-{tag}",
            f"scheduler.asha={str(asha).lower()}",
            "seed=7",
        ],
    )


def timeline(results, metric: str) -> tuple[list[dict], list[tuple[float, float]]]:
    """(every reported epoch with its absolute time, each trial's (start, end) times)."""
    events, spans = [], []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or not len(frame) or metric not in frame:
            continue
        # timestamp = floor(start + time_total_s): the largest lower bound is the best guess.
        start = max(frame["timestamp"] - frame["time_total_s"])
        spans.append((float(start), float(start + frame["time_total_s"].max())))
        trial = str(result.path).rsplit("/", 1)[-1]
        for _, row in frame.iterrows():
            events.append(
                {
                    "trial": trial,
                    "epoch": int(row["epoch"]),
                    "time": float(start + row["time_total_s"]),
                    "score": float(row[metric]),
                }
            )
    events.sort(key=lambda e: e["time"])
    return events, spans


def most_overlapping(spans: list[tuple[float, float]]) -> int:
    """How many trials ran at once, at most: the concurrency Tune actually achieved."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def time_to_target(events: list[dict], started: float, target: float) -> tuple[float, int]:
    """(seconds from `started` until a score >= target, epochs reported by then); NaN if never."""
    for count, event in enumerate(events, 1):
        if event["score"] >= target:
            return event["time"] - started, count
    return math.nan, len(events)


def run_one(storage, sweep) -> dict:
    from tune.sweep import build_tuner

    tuner = build_tuner(sweep, storage, resume=False)
    started = time.time()
    results = tuner.fit()
    wall = time.time() - started
    events, spans = timeline(results, sweep.metric)
    return {
        "started": started,
        "wall_s": wall,
        "events": events,
        "trial_seconds": [end - start for start, end in spans],
        "concurrency": most_overlapping(spans),
        "epochs": len(events),
        "best": max((e["score"] for e in events), default=math.nan),
        "trial_configs": sorted(str(r.config) for r in results),
    }


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR, parts=("asha", "modes")) -> Result:
    tag = uuid.uuid4().hex[:6]
    result = Result("sweep", quick=quick)
    with bench_storage("sweep") as storage:
        start_ray()
        if "asha" in parts:
            asha_vs_random(result, storage, quick=quick, tag=tag)
        if "modes" in parts:
            trial_modes(result, storage, quick=quick, tag=tag)
    result.write(out_dir)
    return result


def asha_vs_random(result: Result, storage, *, quick: bool, tag: str) -> None:
    runs = {}
    for asha in (False, True):
        sweep = sweep_config(quick=quick, asha=asha, tag=tag)
        label = "asha" if asha else "random"
        print(f"[sweep] {sweep.name}: {sweep.num_samples} trials ...", flush=True)
        runs[label] = run_one(storage, sweep)
    random, asha = runs["random"], runs["asha"]
    target = random["best"] - EPSILON
    for run_ in runs.values():
        run_["time_to_target_s"], run_["epochs_to_target"] = time_to_target(
            run_["events"], run_["started"], target
        )
        run_["tune_overhead"] = run_["wall_s"] / (
            sum(run_["trial_seconds"]) / max(run_["concurrency"], 1)
        )
    result.settings = {
        "sweep": f"{sweep.train_config} x {sweep.num_samples} trials, seed {sweep.seed}",
        "space": list(sweep.space),
        "max_epochs": sweep.scheduler.max_epochs,
        "asha": sweep.scheduler.model_dump(),
        "epsilon": EPSILON,
        "target": target,
        "same_configs": random["trial_configs"] == asha["trial_configs"],
    }
    result.measurements = runs
    note = "" if not math.isnan(asha["time_to_target_s"]) else "ASHA never reached the target"
    result.ratio(
        "asha_time_to_target",
        f"time to within {EPSILON} of the best {sweep.metric}: ASHA vs random",
        raylane=asha["time_to_target_s"],
        baseline=random["time_to_target_s"],
        unit="s",
        goal="<= 0.3",
        note=note,
    )
    shown = {  # row name -> (measurement, label, unit); no goal, for context
        "asha_epochs_to_target": ("epochs_to_target", "epochs trained until then", "epochs"),
        "asha_wall_time": ("wall_s", "whole sweep wall time", "s"),
    }
    for name, (key, label, unit) in shown.items():
        result.ratio(name, f"{label}: ASHA vs random", raylane=asha[key],
                     baseline=random[key], unit=unit)  # fmt: skip
    for label, run_ in runs.items():
        result.ratio(
            f"tune_overhead_{label}",
            f"Tune overhead ({label}): wall time / (sum of trial times / concurrency)",
            raylane=run_["wall_s"],
            baseline=sum(run_["trial_seconds"]) / max(run_["concurrency"], 1),
            unit="s",
        )


def trial_modes(result: Result, storage, *, quick: bool, tag: str) -> None:
    """The same sweep with trials in Ray Train and inside the Tune trial, interleaved."""
    from tune.config import load_sweep_config

    preset, samples, repeats = ("debug-sweep", 2, 1) if quick else ("digits-sweep", 8, MODE_REPEATS)
    runs = {"trainer": [], "in_trial": []}
    for repeat in range(repeats):
        for mode in runs:  # A B A B ...: both see the same machine, warm or not
            sweep = load_sweep_config(preset, [
                f"name=bench-{mode}-{repeat}-{tag}", f"num_samples={samples}", "seed=7",
                f"trial_mode={mode}", "scheduler.asha=false", f"scheduler.max_epochs={MODE_EPOCHS}",
            ])  # fmt: skip
            print(f"[sweep] {sweep.name}: {samples} trials, {mode} ...", flush=True)
            runs[mode].append(timed_sweep(storage, sweep))
            # The configured limit: overlaps from Tune's whole-second timestamps overcount
            # trials of a few seconds (3-4 seen with a limit of 2).
            runs[mode][-1]["concurrency"] = (
                sweep.max_concurrent_trials or runs[mode][-1]["concurrency"]
            )
    walls = {mode: [r["wall_s"] for r in done] for mode, done in runs.items()}
    start = process_start_s()
    compute = median([r["epoch_s"] / r["concurrency"] for r in runs["in_trial"]]) + start
    result.measurements["trial_modes"] = {**runs, "process_start_s": start}
    result.settings["trial_modes"] = f"{preset} x {samples} trials, {MODE_EPOCHS} epochs, FIFO"
    spread = {mode: f"{min(w):.1f}-{max(w):.1f} s" for mode, w in walls.items()}
    result.ratio(
        "in_trial_vs_trainer",
        f"sweep wall time incl. data prep, {samples} configs x {MODE_EPOCHS} epochs: in-trial vs "
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


def timed_sweep(storage, sweep) -> dict:
    """Wall time from before the data is read (build_tuner prepares it) to the end of fit()."""
    from tune.sweep import build_tuner

    started = time.perf_counter()
    results = build_tuner(sweep, storage, resume=False, live_table=False).fit()
    wall = time.perf_counter() - started
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None]
    _, spans = timeline(results, sweep.metric)
    return {
        "wall_s": wall,
        "epoch_s": float(sum(f["epoch_s"].sum() for f in frames if "epoch_s" in f)),
        "epochs": int(sum(len(f) for f in frames)),
        "errors": sum(r.error is not None for r in results),
        "concurrency": max(most_overlapping(spans), 1),
    }


def process_start_s() -> float:
    """A fresh Python importing what a trial process imports: the floor of any trial's start."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import workloads.worker, ray.tune"], check=True)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--only", choices=["asha", "modes"])
    known, rest = parser.parse_known_args(argv)
    parts = (known.only,) if known.only else ("asha", "modes")
    return bench_main("sweep", functools.partial(run, parts=parts), __doc__, rest)


if __name__ == "__main__":
    raise SystemExit(main())

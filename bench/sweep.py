"""Sweeps: ASHA against random search without early stopping, on the same sampled configs.

    python -m bench.sweep            # 3-6 minutes on 2 cores; writes bench/results/sweep.json
    python -m bench.sweep --quick    # a smoke-sized run

Both sweeps are `tune.sweep.build_tuner(...).fit()` on the `digits-sweep` preset (4 trials of
up to 6 epochs, to fit the time budget) with the same seed, so Tune's BasicVariantGenerator samples the same configurations in the same order; one
runs ASHA, the other FIFO (every trial to the last epoch). Measured:

- time to target: seconds from the start of `fit()` until some trial first reports a score
  within EPSILON of the best score of the random search (which trains every config fully),
  and the epochs trained by all trials until then;
- Tune's overhead: sweep wall time over (sum of trial times / concurrent trials).

When each epoch was reported comes from Tune's own per-result fields: `time_total_s` (since
the trial started, exact) and `timestamp` (whole seconds), which pin down a trial's start to
within a second.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    Result,
    bench_main,
    bench_storage,
    start_ray,
)

EPSILON = 0.005  # "within half a point of accuracy of the best"


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


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:

    tag = uuid.uuid4().hex[:6]
    result = Result("sweep", quick=quick)
    with bench_storage("sweep") as storage:
        start_ray()
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
    result.write(out_dir)
    return result


def main(argv=None) -> int:
    return bench_main("sweep", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""When each trial of a sweep started, reported and ended, as the sweep driver saw it.

    timed = timed_sweep(storage, sweep)   # a fresh sweep, clocked from before its data is read
    timed["wall_s"], timed["events"], timed["epoch_s"], timed["trial_setup_s"]

Used by bench/sweep.py and bench/sweep_asha.py. Tune's own per-result `timestamp` is whole
seconds, too coarse for sweeps of ~10 s; a Tune callback in the driver notes each trial's start,
reports and end with the driver's clock instead (the driver sees a report within a few ms of
the trial sending it: reports are not buffered for function trainables).
"""

from __future__ import annotations

import time

from ray.tune import Callback

KEPT = ("epoch", "epoch_s", "checkpoint_s", "time_total_s")  # besides the sweep's metric


class Timeline(Callback):
    """Driver-side times (time.perf_counter) of every trial start, report and end."""

    def __init__(self, metric: str):
        self.metric, self.events = metric, []

    def _note(self, kind: str, trial, result: dict | None = None) -> None:
        row = {"kind": kind, "trial": trial.trial_id, "time": time.perf_counter()}
        if result is not None:
            row |= {key: result.get(key) for key in (*KEPT, self.metric)}
        self.events.append(row)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._note("start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._note("result", trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._note("end", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._note("end", trial)


def timed_sweep(storage, sweep) -> dict:
    """Run `sweep` afresh. Times are seconds since the clock started, before build_tuner reads
    and splits the data: what a user waits for."""
    from tune.sweep import build_tuner

    timeline = Timeline(sweep.metric)
    started = time.perf_counter()
    tuner = build_tuner(sweep, storage, resume=False, live_table=False, callbacks=[timeline])
    prepared = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    events = [{**e, "time": e["time"] - started} for e in timeline.events]
    reports = [e for e in events if e["kind"] == "result"]
    return {
        "wall_s": wall,
        "prepare_s": prepared - started,
        "first_trial_start_s": min((e["time"] for e in events), default=float("nan")),
        "events": events,
        "epochs": len(reports),
        "epoch_s": sum(e["epoch_s"] or 0.0 for e in reports),
        "checkpoint_s": sum(e["checkpoint_s"] or 0.0 for e in reports),
        "trial_setup_s": trial_setup(reports),
        "best": max((e[sweep.metric] for e in reports), default=float("nan")),
        "errors": sum(r.error is not None for r in results),
        "trial_configs": sorted(str(r.config) for r in results),
    }


def trial_setup(reports: list[dict]) -> list[float]:
    """Per trial: what its function did before its first epoch began (Tune's time_total_s
    counts from the trial's start in its process, so process starts are not in it)."""
    first: dict[str, dict] = {}
    for report in reports:
        first.setdefault(report["trial"], report)
    return [
        r["time_total_s"] - r["epoch_s"] - (r["checkpoint_s"] or 0.0)
        for r in first.values()
        if r["time_total_s"] is not None and r["epoch_s"] is not None
    ]


def time_to_target(events: list[dict], metric: str, target: float) -> tuple[float, int]:
    """(seconds until some trial first reported `metric` >= target, epochs reported by then);
    (NaN, all epochs) if none did."""
    reports = [e for e in events if e["kind"] == "result"]
    for count, report in enumerate(reports, 1):
        if report[metric] is not None and report[metric] >= target:
            return report["time"], count
    return float("nan"), len(reports)

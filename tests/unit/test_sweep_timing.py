"""The sweep benchmark's clock (bench/sweep_timing.py): time to target and per-trial set-up
from the reports a Tune callback noted, without Ray."""

from __future__ import annotations

import math

from bench.sweep_timing import time_to_target, trial_setup


def report(trial: str, time: float, accuracy: float, *, total: float = 1.0) -> dict:
    return {"kind": "result", "trial": trial, "time": time, "val_accuracy": accuracy,
            "time_total_s": total, "epoch_s": 0.25, "checkpoint_s": 0.05}  # fmt: skip


def test_time_to_target_is_the_first_report_that_reaches_it_and_counts_epochs_until_then():
    events = [
        {"kind": "start", "trial": "a", "time": 0.5},
        report("a", 2.0, 0.80),
        report("b", 2.5, 0.95),
        report("a", 3.0, 0.97),
        {"kind": "end", "trial": "a", "time": 3.1},
    ]
    assert time_to_target(events, "val_accuracy", 0.95) == (2.5, 2)
    seconds, epochs = time_to_target(events, "val_accuracy", 0.99)
    assert math.isnan(seconds) and epochs == 3


def test_a_trials_set_up_is_its_first_report_less_that_epoch_and_its_checkpoint():
    events = [report("a", 2.0, 0.8, total=1.3), report("a", 2.4, 0.9, total=1.7)]
    events.append(report("b", 2.2, 0.7, total=0.5))
    assert [round(s, 6) for s in trial_setup(events)] == [1.0, 0.2]

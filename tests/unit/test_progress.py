"""Progress within long epochs: a line every few seconds from rank 0, none for short epochs.

PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_progress.py -q
"""

from __future__ import annotations

from workloads.config import load_job_config
from workloads.progress import EpochProgress, expected_batches


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epoch(progress: EpochProgress, clock: Clock, epoch: int, batches: int, batch_s: float):
    progress.start(epoch)
    for _ in range(batches):
        clock.now += batch_s
        progress.batch_done()
    progress.end()


def test_a_long_epoch_prints_a_line_every_interval_with_done_total_and_rate():
    clock, lines = Clock(), []
    progress = EpochProgress(
        "cnn", epochs=4, every_s=10, expected_batches=1000, clock=clock, emit=lines.append
    )
    run_epoch(progress, clock, 1, batches=320, batch_s=0.125)  # 40 s: lines at 10, 20, 30, 40 s
    assert len(lines) == 4
    assert lines[0] == "[cnn] epoch 1/4: 80/~1000 batches (8%), 8.0 batches/s, ~115s left"
    run_epoch(progress, clock, 2, batches=320, batch_s=0.125)  # now the total is known: 320
    assert lines[4] == "[cnn] epoch 2/4: 80/320 batches (25%), 8.0 batches/s, 30s left"


def test_short_epochs_other_ranks_and_zero_print_nothing():
    clock, lines = Clock(), []
    for every_s in (10, 0):
        progress = EpochProgress("mlp", epochs=3, every_s=every_s, clock=clock, emit=lines.append)
        for epoch in (1, 2, 3):
            run_epoch(progress, clock, epoch, batches=50, batch_s=0.1 if every_s else 1.0)
    assert lines == []


def test_an_unknown_total_shows_batches_and_rate_and_a_short_estimate_is_not_exceeded():
    clock, lines = Clock(), []
    progress = EpochProgress("x", epochs=1, every_s=5, clock=clock, emit=lines.append)
    run_epoch(progress, clock, 1, batches=10, batch_s=1.0)
    assert lines[0] == "[x] epoch 1/1: 5 batches, 1.0 batches/s"
    lines.clear()
    short = EpochProgress("x", epochs=1, every_s=5, expected_batches=3, clock=clock,
                          emit=lines.append)  # fmt: skip
    run_epoch(short, clock, 1, batches=10, batch_s=1.0)
    assert lines[0].startswith("[x] epoch 1/1: 5/~5 batches (100%)")


def test_the_driver_estimates_a_ranks_batches_from_the_training_split():
    assert expected_batches(rows=1797, validation_fraction=0.2, workers=2, batch_size=32) == 23
    assert load_job_config("debug").train.progress_every_s == 15

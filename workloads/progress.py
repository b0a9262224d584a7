"""A live progress line within long epochs, printed by rank 0 every few seconds.

    progress = EpochProgress("digits-cnn", epochs=10, every_s=30, expected_batches=1200)
    for epoch in ...:
        progress.start(epoch)
        for batch in ...:
            ...
            progress.batch_done()
        progress.end()

prints, while an epoch runs longer than `every_s`,

    [digits-cnn] epoch 3/10: 400/1200 batches (33%), 52.1 batches/s, ~15s left

and nothing for epochs shorter than that: the per-epoch line (workloads/worker.py) says the
rest. Pure Python, no Ray (tests/unit/test_progress.py).

The first epoch streams from Ray Data, and a rank does not know how many batches its shard
holds: its total is the driver's estimate (rows of the training split / workers / batch size),
shown with a `~`. From the second epoch on, the total is the count of the epoch before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class EpochProgress:
    """Throttled progress lines for one rank's epochs; `every_s <= 0` turns them off."""

    def __init__(
        self,
        run: str,
        *,
        epochs: int,
        every_s: float,
        expected_batches: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
    ):
        self.run, self.epochs, self.every_s = run, epochs, every_s
        self.total, self.exact = expected_batches, False
        self.clock = clock
        self.emit = emit or (lambda line: print(line, flush=True))
        self.epoch, self.done, self.started, self.next_at = 0, 0, 0.0, math.inf

    def start(self, epoch: int) -> None:
        self.epoch, self.done = epoch, 0
        self.started = self.clock()
        self.next_at = self.started + self.every_s if self.every_s > 0 else math.inf

    def batch_done(self) -> None:
        # One comparison per batch when no line is due: a clock read costs ~50 ns.
        self.done += 1
        if self.next_at == math.inf:
            return
        now = self.clock()
        if now >= self.next_at:
            self.emit(self.line(now))
            self.next_at = now + self.every_s

    def end(self) -> None:
        """The epoch is over: its batch count is the next epoch's exact total."""
        if self.done:
            self.total, self.exact = self.done, True
        self.next_at = math.inf

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        text = f"[{self.run}] epoch {self.epoch}/{self.epochs}: {self.done}"
        if self.total:
            mark = "" if self.exact else "~"
            total = max(self.total, self.done)  # an estimate may fall short
            text += f"/{mark}{total} batches ({100 * self.done / total:.0f}%)"
            left = (total - self.done) / rate if rate > 0 else math.inf
            text += f", {rate:.1f} batches/s, {mark}{left:.0f}s left"
        else:
            text += f" batches, {rate:.1f} batches/s"
        return text


def expected_batches(*, rows: int, validation_fraction: float, workers: int, batch_size: int):
    """The driver's estimate of one rank's batches per epoch (the split is by row hash, so
    close, not exact)."""
    train_rows = rows * (1 - validation_fraction)
    return max(1, math.ceil(train_rows / max(workers, 1) / batch_size))

"""A replica's batch record (serve.http.BatchStats, shown by GET /v1/models/NAME): the benchmark
times the raw forward pass on the very batch sizes a server ran, so batches are counted by rows."""

from __future__ import annotations

from dataclasses import asdict

from serve.http import BatchStats


def test_batches_are_counted_by_their_rows():
    stats = BatchStats()
    stats.record(requests=2, instances=16)  # two requests of 8 rows
    stats.record(requests=16, instances=16)
    stats.record(requests=1, instances=1)
    shown = asdict(stats)
    assert shown["batches_by_rows"] == {16: 2, 1: 1}
    assert (shown["batches"], shown["requests"], shown["instances"]) == (3, 19, 33)
    assert shown["max_batch_size_seen"] == 16

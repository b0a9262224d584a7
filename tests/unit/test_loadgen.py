"""The load generators' measured window (bench/loadgen.py Window, shared with bench/grpc_load.py):
throughput is the completions inside the window over its length, whenever they were sent."""

from __future__ import annotations

import time

from bench.loadgen import Window


def test_a_request_sent_before_the_window_counts_when_it_completes_inside():
    window = Window(warmup=0.0, duration=60.0)
    window.record(window.start - 5.0, ok=True)  # sent during the warm-up, answered now
    window.record(time.perf_counter(), ok=False)
    level = window.summary(mode="closed", concurrency=2)
    assert level["completed"] == 1 and level["errors"] == 1
    assert level["requests_per_s"] == 1 / 60.0
    assert level["p50_ms"] >= 5000  # its latency is the whole wait, warm-up included


def test_completions_during_the_warm_up_do_not_count():
    window = Window(warmup=60.0, duration=1.0)
    window.record(time.perf_counter(), ok=True)
    assert window.summary()["completed"] == 0 and window.summary()["requests_per_s"] == 0


def test_the_open_loop_charges_latency_to_requests_scheduled_in_the_window():
    window = Window(warmup=0.0, duration=60.0)
    window.record(window.start - 1.0, ok=True, by_schedule=True)  # scheduled in the warm-up
    window.record(window.start + 0.001, ok=True, by_schedule=True)
    level = window.summary()
    assert level["completed"] == 2  # both answered inside the window
    assert level["p99_ms"] < 1000  # only the one scheduled inside is in the latencies

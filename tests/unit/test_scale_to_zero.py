"""Scale to zero without Ray: the cold-start clock `raylane serve` prints from, and the config.

PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_scale_to_zero.py -q
"""

from __future__ import annotations

from serve.config import ServeArgs
from serve.scale_to_zero import ColdStartWatch


def observe(watch: ColdStartWatch, states: list[tuple[float, int, int]]) -> list[float]:
    """(time, running, starting) observations -> the cold starts reported."""
    found = [watch.observe(running=r, starting=s, now=t) for t, r, s in states]
    return [seconds for seconds in found if seconds is not None]


def test_a_start_from_zero_running_replicas_is_one_cold_start_timed_from_starting():
    watch = ColdStartWatch()
    # deployed with none, a request starts one (t=2), running at t=8.5; idle to zero; again
    states = [(0, 0, 0), (2, 0, 1), (5, 0, 1), (8.5, 1, 0), (20, 1, 0), (30, 0, 0), (31, 0, 1),
              (35, 1, 0)]  # fmt: skip
    assert observe(watch, states) == [6.5, 4.0]


def test_scaling_between_running_replicas_is_not_a_cold_start():
    watch = ColdStartWatch()
    states = [(0, 0, 1), (3, 1, 0), (4, 1, 1), (6, 2, 0), (9, 1, 0), (10, 2, 0)]
    assert observe(watch, states) == [3.0]  # only the first replica started from zero


def test_min_replicas_zero_is_a_valid_serving_config():
    autoscaling = {"min_replicas": 0, "max_replicas": 2, "downscale_to_zero_delay_s": 30}
    args = ServeArgs.parse({"model": "digits@production", "autoscaling_config": autoscaling})
    assert args.autoscaling_config["min_replicas"] == 0

"""Canary rollout rules without Ray: steps, the weighted and sticky choice, the verdicts, the
record in storage and the `raylane rollout` commands that need no cluster.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_traffic.py -q
"""

from __future__ import annotations

import json
import random
import time

import pytest
from helpers import digits_checkpoint

from cluster.errors import ConfigError, RaylaneError
from raylane.rollout import main as rollout
from serve.canary import parse_faults
from serve.rollout import read_state, rollout_key, write_state
from serve.traffic import (
    MIN_REQUESTS,
    RolloutState,
    VersionStats,
    bucket,
    judge,
    use_candidate,
)
from workloads.checkpoint import open_registry


def state(**changes) -> RolloutState:
    values = dict(model="digits", alias="production", baseline=1, candidate=2,
                  steps=[10, 25, 50, 100], step_seconds=5, started_at=1000.0)  # fmt: skip
    return RolloutState(**{**values, **changes})


def stats(requests: int, errors: int = 0, latency_ms: float = 10.0) -> VersionStats:
    window = VersionStats()
    for n in range(requests):
        window.add(error=n < errors, latency_ms=latency_ms)
    return window


@pytest.mark.parametrize("steps", [[10, 50], [50, 10, 100], [100], [0, 100], [10, 10, 100]])
def test_steps_must_rise_to_100_from_a_share_below_it(steps):
    with pytest.raises(ValueError, match="rising percentages"):
        state(steps=steps)


def test_weight_follows_the_step_and_the_status():
    rollout = state()
    assert rollout.weight == 10
    rollout.step = 2
    assert rollout.weight == 50
    for status in ("promoting", "promoted"):
        rollout.status = status
        assert rollout.weight == 100
    for status in ("rolled_back", "aborted"):
        rollout.status = status
        assert rollout.weight == 0


def test_random_choice_sends_about_the_weight_to_the_candidate():
    random.seed(0)
    for weight in (0, 10, 50, 100):
        share = sum(use_candidate(weight) for _ in range(20_000)) / 200
        assert abs(share - weight) < 1.5, (weight, share)


def test_a_sticky_client_keeps_its_version_and_only_ever_moves_to_the_candidate():
    clients = [f"client-{n}" for n in range(2000)]
    assert all(use_candidate(25, sticky=c) == use_candidate(25, sticky=c) for c in clients)
    on_candidate = {w: {c for c in clients if use_candidate(w, sticky=c)} for w in (10, 25, 50)}
    assert on_candidate[10] <= on_candidate[25] <= on_candidate[50]
    assert abs(len(on_candidate[25]) / len(clients) - 0.25) < 0.04
    assert 0 <= bucket("x") < 100


def test_hold_until_the_step_has_lasted_and_has_evidence():
    rollout = state()
    assert judge(rollout, stats(100), stats(50), elapsed_s=4.9).action == "hold"
    assert judge(rollout, stats(100), stats(MIN_REQUESTS - 1), elapsed_s=60).action == "hold"
    assert judge(rollout, stats(100), stats(MIN_REQUESTS), elapsed_s=5).action == "step"


def test_the_step_before_100_promotes():
    assert judge(state(step=2), stats(50), stats(50), elapsed_s=6).action == "promote"


def test_errors_roll_back_as_soon_as_there_is_evidence_not_at_the_end_of_the_step():
    verdict = judge(state(), stats(100), stats(MIN_REQUESTS, errors=3), elapsed_s=0.5)
    assert verdict.action == "rollback"
    assert "error rate of version 2 30.0% (3/10) against 0.0% of version 1" in verdict.reason


def test_the_error_bound_is_over_the_current_versions_rate():
    rollout = state(max_error_rate=0.05)
    same_as_current = judge(rollout, stats(100, errors=20), stats(100, errors=20), elapsed_s=9)
    assert same_as_current.action == "step"
    worse = judge(rollout, stats(100, errors=20), stats(100, errors=26), elapsed_s=9)
    assert worse.action == "rollback"


def test_a_slow_candidate_is_rolled_back_at_the_end_of_its_step():
    slow = stats(50, latency_ms=40.0)
    rollout = state(max_latency_ratio=1.5)
    assert judge(rollout, stats(50, latency_ms=10.0), slow, elapsed_s=1).action == "hold"
    verdict = judge(rollout, stats(50, latency_ms=10.0), slow, elapsed_s=6)
    assert verdict.action == "rollback" and "p99 latency of version 2 40.0 ms" in verdict.reason
    # Within the noise floor (a few ms) or within the ratio: no breach.
    assert (
        judge(rollout, stats(50, latency_ms=2.0), stats(50, 0, 6.0), elapsed_s=6).action == "step"
    )
    assert judge(rollout, stats(50, latency_ms=30), stats(50, 0, 44), elapsed_s=6).action == "step"


def test_p99_is_nearest_rank():
    window = VersionStats()
    for latency in range(1, 201):
        window.add(error=False, latency_ms=float(latency))
    assert window.p99_ms == 199.0 and VersionStats().p99_ms == 0.0


def test_fault_injection_setting_is_parsed_and_checked():
    assert parse_faults("digits:3=0.5, wine:2=1") == {("digits", 3): 0.5, ("wine", 2): 1.0}
    assert parse_faults("") == {}
    for bad in ("digits=0.5", "digits:3=2", "digits:3=x"):
        with pytest.raises(ConfigError, match="NAME:VERSION=FRACTION"):
            parse_faults(bad)


# ---------------------------------------------------------------------- record and commands


@pytest.fixture
def registry(local_storage, tmp_path, one_thread):
    registry = open_registry(local_storage)
    for seed in (1, 2):
        checkpoint = digits_checkpoint(tmp_path / f"v{seed}", seed=seed, steps=2)
        registry.register("digits", checkpoint, lineage={})
    registry.promote("digits", "production", 1)
    return registry


def test_the_record_is_compare_and_swapped_beside_the_registry(local_storage):
    assert read_state(local_storage, "digits") == (None, None)
    assert write_state(local_storage, state(), None)
    assert not write_state(local_storage, state(), None), "a second writer must lose"
    stored, token = read_state(local_storage, "digits")
    assert stored == state() and rollout_key("digits") == "registry/digits/rollout.json"
    stored.step = 1
    assert write_state(local_storage, stored, token)
    assert not write_state(local_storage, stored, token), "a stale token must lose"


def run(registry, *args: str) -> None:
    rollout([*args, "--storage", registry.storage.uri])


def test_a_second_rollout_of_the_same_model_is_refused_naming_the_running_one(registry):
    write_state(registry.storage, state(started_at=time.time()), None)
    with pytest.raises(RaylaneError) as refused:
        run(registry, "start", "digits:2", "--alias", "production")
    message = str(refused.value)
    assert "a rollout of digits is running (digits:2 onto digits@production" in message
    assert "raylane rollout abort digits" in message and "\n" not in message


@pytest.mark.parametrize(
    "args, message",
    [
        (["digits", "--alias", "production"], "rollout start takes NAME:VERSION"),
        (["digits:1", "--alias", "production"], "already points at version 1"),
        (["digits:7", "--alias", "production"], "has no version 7"),
        (["digits:2", "--alias", "staging"], "has no alias 'staging'"),
        (["digits:2", "--alias", "production", "--steps", "50,10"], "steps: rising percentages"),
        (["digits:2", "--alias", "production", "--step-seconds", "0"], "step_seconds"),
    ],
)
def test_bad_starts_are_one_line_errors_before_any_ray(registry, args, message):
    with pytest.raises(RaylaneError, match=message):
        run(registry, "start", *args)
    assert read_state(registry.storage, "digits") == (None, None)


def test_abort_sends_all_traffic_back_and_status_says_why(registry, capsys):
    write_state(registry.storage, state(started_at=time.time()), None)
    run(registry, "abort", "digits")
    stored, _ = read_state(registry.storage, "digits")
    assert (stored.status, stored.weight) == ("aborted", 0)
    assert registry.resolve("digits@production") == ("digits", 1)
    capsys.readouterr()
    run(registry, "status", "digits")
    shown = capsys.readouterr().out
    assert "aborted, 0% to the candidate" in shown and "aborted by `raylane rollout abort`" in shown
    run(registry, "status", "digits", "--json")
    assert json.loads(capsys.readouterr().out)["status"] == "aborted"
    with pytest.raises(RaylaneError, match="the rollout of digits is over"):
        run(registry, "abort", "digits")
    with pytest.raises(RaylaneError, match="no running rollout of digits to resume"):
        run(registry, "resume", "digits")


def test_a_claimed_promotion_cannot_be_aborted_and_blocks_a_second_start(registry):
    """Once the controller has claimed the promotion the alias is about to move: an abort then
    would leave a record that says aborted beside a moved alias, so it is refused, naming the
    way back."""
    write_state(registry.storage, state(started_at=time.time(), status="promoting"), None)
    with pytest.raises(RaylaneError, match="moving @production to version 2 right now") as refused:
        run(registry, "abort", "digits")
    assert "raylane models rollback digits --alias production" in str(refused.value)
    with pytest.raises(RaylaneError, match="a rollout of digits is running"):
        run(registry, "start", "digits:2", "--alias", "production")

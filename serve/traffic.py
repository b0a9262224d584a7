"""Canary rollout rules, without Ray: the rollout record, which version answers a request, and
when the controller steps the weight up, promotes the candidate or rolls it back.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_traffic.py -q

    state = RolloutState(model="digits", alias="production", baseline=1, candidate=2,
                         steps=[10, 25, 50, 100], step_seconds=60, started_at=time.time())
    use_candidate(state.weight, sticky="client-7")        # the same client gets the same version
    verdict = judge(state, baseline_stats, candidate_stats, elapsed_s=61.0)
    verdict.action                                        # hold, step, promote or rollback

serve/rollout.py (the controller and the record in storage), serve/canary.py (each replica's
part) and raylane/rollout.py (the command) all go through these functions, so the rules live in
one place and are unit-tested directly (tests/unit/test_traffic.py).

The bounds compare the candidate with the current version over the same step, on the same
replicas, under the same load: the candidate's error rate may exceed the current version's by at
most `max_error_rate`, and its p99 latency may be at most `max_latency_ratio` times the current
version's. Only answers that are the server's doing count: 2xx and 5xx (a model failure is a
5xx); a 4xx is the client's input and says nothing about the version.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from cluster.config import Strict

# promoting: the controller has claimed the promotion and is moving the alias (an abort is
# refused from then on, so the record can never say aborted while the alias moved).
Status = Literal["running", "promoting", "promoted", "rolled_back", "aborted"]
LIVE = ("running", "promoting")  # a rollout that is not over
# A verdict needs evidence: before this many candidate answers in a step nothing is decided
# (one early failure out of three requests is not a 33% error rate).
MIN_REQUESTS = 10
# p99 differences below this are noise on a busy 2-core machine (a 2 ms vs 4 ms p99 is not a
# slow model); above it the ratio decides.
LATENCY_SLACK_MS = 5.0
MAX_HISTORY = 50


class RolloutState(Strict):
    """One rollout of `candidate` onto `model@alias`, as stored in rollout.json."""

    model: str
    alias: str
    baseline: int = Field(description="the version the alias pointed at when the rollout began")
    candidate: int
    steps: list[int] = Field(description="candidate shares in percent, rising, ending at 100")
    step_seconds: float = Field(gt=0, description="how long each step is watched at least")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_latency_ratio: float = Field(default=1.5, ge=1)
    sticky_header: str | None = None
    status: Status = "running"
    step: int = Field(default=0, ge=0, description="index into steps")
    started_at: float = Field(description="time.time() when started; identifies the rollout")
    step_started_at: float = 0.0
    reason: str = ""
    history: list[dict] = []

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, steps: list[int]) -> list[int]:
        rising = all(a < b for a, b in zip(steps, steps[1:], strict=False))
        if len(steps) < 2 or not rising or steps[0] < 1 or steps[-1] != 100:
            raise ValueError(
                "rising percentages of traffic for the candidate, at least one below "
                "100 and the last 100, e.g. 10,25,50,100"
            )
        return steps

    @property
    def weight(self) -> int:
        """The candidate's share of requests now, in percent."""
        if self.status == "running":
            return self.steps[self.step]
        return 100 if self.status in ("promoting", "promoted") else 0

    @property
    def key(self) -> str:
        """Names one step of one rollout: the stats a replica reports are for this key."""
        return f"{self.started_at:.6f}/{self.step}"

    def summary(self) -> str:
        return (
            f"{self.model}:{self.candidate} onto {self.model}@{self.alias} (from version "
            f"{self.baseline}): {self.status.replace('_', ' ')}, {self.weight}% to the candidate"
        )


def bucket(sticky: str) -> float:
    """A client's fixed point in [0, 100): the candidate serves it while the weight is above
    it, so as the weight grows clients only ever move to the candidate, never back."""
    digest = hashlib.sha256(sticky.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def use_candidate(weight: float, *, sticky: str | None = None) -> bool:
    """Whether this request goes to the candidate: by the client's bucket when `sticky` (a
    header value) is given, else at random."""
    if weight <= 0:
        return False
    if weight >= 100:
        return True
    point = bucket(sticky) if sticky else random.random() * 100
    return point < weight


@dataclass
class VersionStats:
    """One version's answers over a window: counts and latencies (ms)."""

    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, *, error: bool, latency_ms: float) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latencies_ms.append(latency_ms)

    def merge(self, other: VersionStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latencies_ms += other.latencies_ms

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float:
        """Nearest-rank p99 (the largest value below 100 samples)."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def describe(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p99_ms": round(self.p99_ms, 2),
        }


@dataclass(frozen=True)
class Verdict:
    action: Literal["hold", "step", "promote", "rollback"]
    reason: str = ""


def judge(
    state: RolloutState, baseline: VersionStats, candidate: VersionStats, *, elapsed_s: float
) -> Verdict:
    """What to do now, `elapsed_s` into the step. Errors are judged as soon as there is
    evidence (so a bad candidate is rolled back within its first step); latency and the step
    up only once the step has lasted `step_seconds` with enough candidate answers."""
    if candidate.requests >= MIN_REQUESTS:
        breach = error_breach(state, baseline, candidate)
        if breach:
            return Verdict("rollback", breach)
    if elapsed_s < state.step_seconds or candidate.requests < MIN_REQUESTS:
        return Verdict("hold")
    breach = latency_breach(state, baseline, candidate)
    if breach:
        return Verdict("rollback", breach)
    last = state.step + 1 == len(state.steps) - 1  # the next step is 100%: the alias moves
    return Verdict("promote" if last else "step")


def error_breach(state: RolloutState, baseline: VersionStats, candidate: VersionStats) -> str:
    excess = candidate.error_rate - baseline.error_rate
    if excess <= state.max_error_rate:
        return ""
    return (
        f"error rate of version {state.candidate} {candidate.error_rate:.1%} "
        f"({candidate.errors}/{candidate.requests}) against {baseline.error_rate:.1%} of version "
        f"{state.baseline}: more than --max-error-rate {state.max_error_rate:g} above it"
    )


def latency_breach(state: RolloutState, baseline: VersionStats, candidate: VersionStats) -> str:
    if baseline.requests < MIN_REQUESTS:
        return ""  # no comparison without the current version's answers
    slow, fast = candidate.p99_ms, baseline.p99_ms
    if slow <= fast * state.max_latency_ratio or slow - fast < LATENCY_SLACK_MS:
        return ""
    return (
        f"p99 latency of version {state.candidate} {slow:.1f} ms against {fast:.1f} ms of "
        f"version {state.baseline}: more than --max-latency-ratio {state.max_latency_ratio:g}"
    )


def record_event(state: RolloutState, event: str, *, at: float, **details) -> None:
    """Append to the rollout's history (the newest MAX_HISTORY entries are kept)."""
    entry = {"at": round(at, 3), "event": event, "weight": state.weight, **details}
    state.history = [*state.history, entry][-MAX_HISTORY:]

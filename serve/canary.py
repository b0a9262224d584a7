"""A replica's part in a canary rollout: follow the record, keep the candidate loaded, pick the
version per request, count each version's answers and push them to the controller.

    PYTHONPATH=. .venv/bin/python -m pytest tests/integration/test_rollout.py -q

    canary = Canary(registry, device="cpu", allow_modules=[])          # in ModelServer.__init__
    predictor = canary.choose(self.predictor, request.headers)         # per request
    canary.record(predictor.version, status_code, latency_ms)          # per answer

A replica serving `NAME@ALIAS` follows `<storage>/registry/NAME/rollout.json` (serve/rollout.py)
every poll, as it follows the alias: while a rollout of that alias runs, the candidate version is
loaded beside the current one and gets `weight` percent of the requests (by a hash of the sticky
header's value when the rollout names one, else at random). Once promoted, the candidate answers
everything until the alias watcher has switched to it; rolled back or aborted, it is dropped.

Fault injection, FOR TESTS ONLY: `$RAYLANE_TEST_FAULTS="digits:3=0.5"` (comma-separated, read
by each replica when it starts) makes version 3 of digits fail that fraction of its requests with
a model failure (a 500), so a rollback can be shown on a real deployment. Never set it anywhere
else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence

from ray.util import metrics as ray_metrics

from cluster.errors import ConfigError
from cluster.registry import ModelRef, Registry
from serve.predictor import Predictor
from serve.rollout import find_controller, read_state, start_controller
from serve.schemas import RequestError
from serve.traffic import RolloutState, VersionStats, use_candidate

FAULTS_ENV = "RAYLANE_TEST_FAULTS"
# A running rollout whose controller has been gone this long is taken over by a replica: it
# starts a new one (one wins: the actor is named), which continues from the stored step. The
# grace lets `raylane rollout resume` and a controller that is just ending go first.
CONTROLLER_GRACE_S = 5.0
logger = logging.getLogger("ray.serve")


class InjectedFault(RequestError):
    """A model failure made on purpose by $RAYLANE_TEST_FAULTS (tests only): a 500 answered
    like any refusal, without the traceback a real bug logs on the replica."""

    def __init__(self, message: str):
        super().__init__(500, message)


def parse_faults(text: str) -> dict[tuple[str, int], float]:
    """ "digits:3=0.5,wine:2=1" -> {("digits", 3): 0.5, ("wine", 2): 1.0}."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ref, _, fraction = item.partition("=")
        try:
            parsed, share = ModelRef.parse(ref), float(fraction)
        except (ConfigError, ValueError):
            raise ConfigError(f"${FAULTS_ENV}: {item!r} is not NAME:VERSION=FRACTION") from None
        if parsed.version is None or not 0 <= share <= 1:
            raise ConfigError(f"${FAULTS_ENV}: {item!r} is not NAME:VERSION=FRACTION (0..1)")
        faults[(parsed.name, parsed.version)] = share
    return faults


class Canary:
    """The rollout as this replica sees it; every method runs on the replica's event loop."""

    def __init__(self, registry: Registry, *, device: str, allow_modules: Sequence[str]):
        self.registry, self.device, self.allow_modules = registry, device, list(allow_modules)
        self.state: RolloutState | None = None
        self.candidate: Predictor | None = None
        self.window: dict[int, VersionStats] = {}
        self.faults = parse_faults(os.environ.get(FAULTS_ENV, ""))
        self.controller_missing_since: float | None = None
        self.weight_gauge = ray_metrics.Gauge(
            "raylane_rollout_weight",
            description="percent of a replica's requests sent to the rollout's candidate version",
            tag_keys=("model", "alias", "candidate"),
        )

    # ------------------------------------------------------------------ per request

    def choose(self, current: Predictor, headers: Mapping[str, str]) -> Predictor:
        state, candidate = self.state, self.candidate
        if state is None or candidate is None or candidate.version == current.version:
            return current
        sticky = headers.get(state.sticky_header) if state.sticky_header else None
        return candidate if use_candidate(state.weight, sticky=sticky) else current

    def inject_fault(self, predictor: Predictor) -> None:
        share = self.faults.get((predictor.name, predictor.version), 0.0)
        if share and random.random() < share:
            raise InjectedFault(f"{FAULTS_ENV} fails {share:.0%} of {predictor.name}:"
                                f"{predictor.version}")  # fmt: skip

    def record(self, version: int, code: int, latency_ms: float) -> None:
        """Count an answer for the controller; a 4xx is the client's, not the version's."""
        if self.state is None or self.state.status != "running" or 400 <= code < 500:
            return
        self.window.setdefault(version, VersionStats()).add(
            error=code >= 500, latency_ms=latency_ms
        )

    # ------------------------------------------------------------------ following the record

    async def follow(self, ref_of: Callable[[], ModelRef], interval_of: Callable[[], float]):
        """Poll the record as long as the replica follows an alias: every second while a
        rollout is live (a rollback must reach every replica within a step), else every watch
        interval, as the alias is polled (a new rollout waits at most that long for a replica,
        which only delays its first verdict)."""
        last_problem = ""
        while True:
            interval = interval_of()
            live = self.state is not None and self.state.status in ("running", "promoting")
            await asyncio.sleep(1.0 if live or interval <= 0 else interval)
            ref = ref_of()
            if interval <= 0 or ref.alias is None:
                continue
            try:
                await self.poll(ref)
                last_problem = ""
            except Exception as error:  # storage down, a controller gone: serve on regardless
                problem = f"{type(error).__name__}: {error}"
                if problem != last_problem:
                    logger.warning(f"following the rollout of {ref} failed ({problem})")
                last_problem = problem

    async def poll(self, ref: ModelRef) -> None:
        await self._push()
        state, _ = await asyncio.to_thread(read_state, self.registry.storage, ref.name)
        if state is not None and state.alias != ref.alias:
            state = None  # a rollout of another alias of this model
        wanted = state is not None and state.status in ("running", "promoting", "promoted")
        if wanted and (self.candidate is None or self.candidate.version != state.candidate):
            self.candidate = await asyncio.to_thread(
                Predictor.load_version, self.registry, ref.name, state.candidate,
                device=self.device, allow_modules=self.allow_modules,
            )  # fmt: skip
            logger.info(f"rollout: {ref.name}:{state.candidate} loaded beside the current version")
        if not wanted:
            self.candidate = None
        self.state = state
        if state is not None:
            tags = {"model": ref.name, "alias": ref.alias, "candidate": str(state.candidate)}
            self.weight_gauge.set(state.weight, tags=tags)

    async def _push(self) -> None:
        """Send this replica's window to the controller, fire and forget. A missing controller
        loses the window (which only delays the verdict) and, once it has been missing for
        CONTROLLER_GRACE_S, is started again from here."""
        window, self.window = self.window, {}
        if self.state is None or self.state.status != "running":
            self.controller_missing_since = None
            return
        controller = await asyncio.to_thread(find_controller, self.state.model)
        if controller is not None:
            self.controller_missing_since = None
            if window:
                controller.report.remote(self.state.key, window)
            return
        now = time.monotonic()
        self.controller_missing_since = self.controller_missing_since or now
        if now - self.controller_missing_since >= CONTROLLER_GRACE_S:
            storage_uri = self.registry.storage.uri
            if await asyncio.to_thread(start_controller, storage_uri, self.state.model):
                logger.warning(f"rollout of {self.state.model}: its controller was gone for "
                               f"{CONTROLLER_GRACE_S:g} s; started a new one")  # fmt: skip
            self.controller_missing_since = None

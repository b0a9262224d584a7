"""Canary rollouts: their record in storage and the controller that steps, promotes or rolls back.

    raylane rollout start digits:2 --alias production --steps 10,25,50,100 --step-seconds 60
    raylane rollout status digits          # reads the record below; needs no Ray
    raylane rollout abort digits           # all traffic back to the current version
    raylane rollout resume digits          # a new controller for a stored running rollout

The record is `<storage>/registry/<name>/rollout.json` (a `RolloutState`, serve/traffic.py),
beside the model's aliases. It is the one truth about a rollout: replicas read the weight from
it (serve/canary.py, as they poll aliases), the controller and the command change it only by
compare-and-swap, so an abort never loses to a step that the controller was writing. A record
whose status is `running` is a running rollout: a second `start` for the model is refused.

The controller is a detached named actor, `raylane-rollout-<name>` in namespace `raylane`, so it
outlives the command that started it. Every TICK_S it reads the record and judges the step
(serve/traffic.py: judge) on the stats the replicas pushed for that step; it writes the next
step, moves the alias with the registry's compare-and-swap (expected: the version the rollout
started from), or sets the weight to 0 and records why. It keeps nothing that matters: killed,
it loses at most the current step's stats: a replica that finds no controller for a running
rollout starts one after a grace (serve/canary.py), and `raylane rollout resume` does so at once;
the new one continues from the stored step with a fresh window.

Why replicas push stats to the controller instead of the controller reading Ray's metrics: the
metrics endpoint is per node, exported every few seconds and aggregated by Prometheus, which a
cluster may not have; the verdict needs exact per-step counts and latencies from every replica
now. Each replica sends its window (per version: requests, 5xx, latencies) once per poll, tagged
with the step it routed under (`RolloutState.key`); stats for another step are dropped. The
same numbers also go to Ray's metrics endpoint for dashboards (serve/app.py, serve/canary.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import ray

from cluster.errors import ConflictError, NotFoundError, RaylaneError
from cluster.registry import check_name
from cluster.storage import Storage, dump_json
from serve.traffic import LIVE, RolloutState, VersionStats, judge, record_event
from workloads.checkpoint import open_registry

NAMESPACE = "raylane"
TICK_S = 0.5
logger = logging.getLogger("ray.serve")


def rollout_key(name: str) -> str:
    check_name(name)
    return f"registry/{name}/rollout.json"


def controller_name(name: str) -> str:
    return f"raylane-rollout-{name}"


def read_state(storage: Storage, name: str) -> tuple[RolloutState | None, str | None]:
    """(record, CAS token), or (None, None) when the model never had a rollout."""
    try:
        data, token = storage.read_versioned(rollout_key(name))
    except NotFoundError:
        return None, None
    try:
        return RolloutState.model_validate(json.loads(data)), token
    except ValueError as error:
        raise RaylaneError(
            f"{storage.uri_for(rollout_key(name))} is not a rollout record ({error}); delete it "
            "and start the rollout again"
        ) from None


def write_state(storage: Storage, state: RolloutState, token: str | None) -> bool:
    """Compare-and-swap the record; False when someone else wrote it since `token`."""
    return storage.compare_and_swap(rollout_key(state.model), dump_json(state.model_dump()), token)


def update_state(
    storage: Storage, name: str, change: Callable[[RolloutState], None], *, attempts: int = 5
) -> RolloutState:
    """Read, change, compare-and-swap; again on a lost race. NotFoundError without a record."""
    for _ in range(attempts):
        state, token = read_state(storage, name)
        if state is None:
            raise NotFoundError(
                f"model {name!r} has no rollout; start one with "
                f"`raylane rollout start {name}:VERSION --alias ALIAS`"
            )
        change(state)
        if write_state(storage, state, token):
            return state
    raise ConflictError(f"the rollout record of {name!r} kept changing; try again")


def find_controller(name: str):
    """The live controller's handle, or None."""
    try:
        return ray.get_actor(controller_name(name), namespace=NAMESPACE)
    except ValueError:
        return None


def start_controller(storage_uri: str, name: str) -> bool:
    """Make sure a controller drives the model's running rollout; False if one already did."""
    controller = RolloutController.options(
        name=controller_name(name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(storage_uri, name)
    return ray.get(controller.start.remote(), timeout=60)


@ray.remote(num_cpus=0)
class RolloutController:
    """Drives one model's rollout from its record; see the module docstring."""

    def __init__(self, storage_uri: str, name: str):
        self.storage = Storage(storage_uri)
        self.registry = open_registry(self.storage)
        self.name = name
        self.key = ""  # the step whose stats are being collected
        self.stats: dict[int, VersionStats] = {}
        self.window_start = time.time()
        self._task: asyncio.Task | None = None

    async def start(self) -> bool:
        if self._task is not None and not self._task.done():
            return False
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def report(self, key: str, stats: dict[int, VersionStats]) -> None:
        """A replica's window; kept only when it is for the step being judged."""
        if key != self.key:
            return
        for version, window in stats.items():
            self.stats.setdefault(version, VersionStats()).merge(window)

    async def _run(self) -> None:
        while True:
            try:
                if not await asyncio.to_thread(self._tick):
                    break
            except Exception:  # storage trouble: keep the rollout where it is, try again
                logger.exception(f"rollout controller of {self.name}: tick failed")
            await asyncio.sleep(TICK_S)
        logger.info(f"rollout controller of {self.name} is done")
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _tick(self) -> bool:
        """One look at the record; False once the rollout is over."""
        state, token = read_state(self.storage, self.name)
        if state is None or state.status not in LIVE:
            return False
        if state.status == "promoting":  # claimed by an earlier tick: move the alias now
            self._promote(state)
            write_state(self.storage, state, token)  # lost to nobody: abort refuses now
            return True
        if state.key != self.key:  # a new step (or a resumed one): a fresh window
            self.key, self.stats, self.window_start = state.key, {}, time.time()
        baseline = self.stats.get(state.baseline, VersionStats())
        candidate = self.stats.get(state.candidate, VersionStats())
        elapsed = time.time() - max(self.window_start, state.step_started_at)
        verdict = judge(state, baseline, candidate, elapsed_s=elapsed)
        if verdict.action == "hold":
            return True
        stats = {str(v): s.describe() for v, s in self.stats.items()}
        now = time.time()
        if verdict.action == "rollback":
            state.status, state.reason = "rolled_back", verdict.reason
        elif verdict.action == "promote":
            # Claimed in the record before the alias moves (next tick): an abort that lands
            # first wins the compare-and-swap below, and then the alias is never moved.
            state.status = "promoting"
        else:
            state.step, state.step_started_at = state.step + 1, now
        record_event(state, verdict.action, at=now, stats=stats, reason=state.reason)
        if write_state(self.storage, state, token):
            logger.info(f"rollout of {self.name}: {verdict.action} -> {state.summary()}")
        return True

    def _promote(self, state: RolloutState) -> None:
        """The alias moves by compare-and-swap from the version the rollout started from; if
        someone moved it meanwhile, the rollout stops and says so (the alias stays theirs)."""
        now = self.registry.aliases(state.model).get(state.alias)
        if now == state.candidate:  # moved by an earlier tick that died before writing the record
            state.status, state.step = "promoted", len(state.steps) - 1
            return
        try:
            self.registry.promote(
                state.model, state.alias, state.candidate, expected=state.baseline
            )
            state.status, state.step = "promoted", len(state.steps) - 1
        except ConflictError as error:
            state.status, state.reason = "aborted", f"the alias was not moved: {error}"

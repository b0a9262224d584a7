"""One served model inside a replica: the ref it follows, the version loaded, swapped whole.

    PYTHONPATH=. .venv/bin/python -m pytest tests/integration/test_serve.py -q

    slot = ModelSlot(registry, ModelRef.parse("digits@production"), device="cpu",
                     allow_modules=[], metrics=ServeMetrics(), replica="abc")
    await slot.switch()            # resolve the ref; load the version beside the current one
    slot.predictor                 # what a request validated now is answered with
    await slot.poll()              # follow the alias once (what the watcher does every interval)

The replica of serve/app.py holds one slot (its app's model); a replica of serve/multi.py holds
one per model it has loaded, so every model follows its own alias the same way. A new version
is loaded beside the old one, then swapped in with one assignment: requests already validated
keep the predictor they were validated against, and every answer names the version that gave it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from cluster.registry import ModelRef, Registry
from serve.http import ServeMetrics
from serve.predictor import Prediction, Predictor

logger = logging.getLogger("ray.serve")


class ModelSlot:
    """A model served by name: `ref` (NAME@ALIAS, NAME:VERSION or NAME) and its loaded version."""

    def __init__(
        self, registry: Registry, ref: ModelRef, *, device: str, allow_modules: Sequence[str],
        metrics: ServeMetrics, replica: str,
    ):  # fmt: skip
        self.registry, self.ref, self.device = registry, ref, device
        self.allow_modules = list(allow_modules)
        self.metrics, self.replica = metrics, replica
        self.predictor: Predictor | None = None
        self._lock = asyncio.Lock()
        self._last_problem = ""

    async def switch(self, ref: ModelRef | None = None) -> None:
        """Resolve `ref` (default: the current one, read under the lock, so a watcher poll that
        waited behind a reconfigure follows the new ref); if it names another version, load that
        beside the current one and swap it in with one assignment."""
        async with self._lock:
            ref = self.ref if ref is None else ref
            name, version = await asyncio.to_thread(self.registry.resolve, ref)
            old = self.predictor
            if old is None or (old.name, old.version) != (name, version):
                self.predictor = await asyncio.to_thread(
                    Predictor.load_version, self.registry, name, version, device=self.device,
                    allow_modules=self.allow_modules,
                )  # fmt: skip
                self.metrics.model_loads.inc(tags={"model": name, "version": str(version)})
                was = f" (was {old.name}:{old.version})" if old else ""
                logger.info(f"replica {self.replica} serves {name}:{version} for {ref}{was}")
            self.ref = ref
            alias = ref.alias or ("latest" if ref.version is None else "pinned")
            self.metrics.model_version.set(version, tags={"model": name, "alias": alias})

    async def poll(self) -> None:
        """Follow the alias (or `latest`) once. Storage trouble is logged once per new message
        and the current version keeps serving."""
        if self.ref.version is not None:
            return
        try:
            await self.switch()
            self._last_problem = ""
        except Exception as error:  # storage down, alias deleted, a broken version, ...
            problem = f"{type(error).__name__}: {error}"
            if problem != self._last_problem:
                serving = f"{self.predictor.name}:{self.predictor.version}"
                logger.warning(f"watching {self.ref} failed ({problem}); serving {serving}")
            self._last_problem = problem


async def follow(slots: Callable[[], Iterable[ModelSlot]], interval_of: Callable[[], float]):
    """Poll every slot's alias each interval (0: off): a promotion reaches a replica within one
    interval. Runs until cancelled, as a task of the replica."""
    while True:
        interval = interval_of()
        await asyncio.sleep(interval if interval > 0 else 1.0)
        if interval > 0:
            for slot in list(slots()):
                await slot.poll()


async def predict_groups(
    items: list[tuple[Predictor, np.ndarray]],
) -> list[tuple[Predictor, Prediction]]:
    """A batch's requests, each validated against a predictor, as one forward pass per predictor
    (several only when a swap happened between a request's validation and its batch, or, on a
    replica of many models, when the batch holds requests for several)."""
    groups: dict[int, list[int]] = {}
    for index, (predictor, _) in enumerate(items):
        groups.setdefault(id(predictor), []).append(index)
    results: list = [None] * len(items)
    for indices in groups.values():
        predictor = items[indices[0]][0]
        rows = np.concatenate([items[i][1] for i in indices])
        prediction = await asyncio.to_thread(predictor.predict, rows)
        start = 0
        for i in indices:
            stop = start + len(items[i][1])
            results[i] = (predictor, prediction[start:stop])
            start = stop
    return results

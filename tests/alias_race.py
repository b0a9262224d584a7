"""Promoters in separate OS processes, for the registry contract's alias race
(tests/registry_contract.py), as separate `raylane models promote` commands or sweeps would be.

    with PromoterProcesses(6) as promoters:
        winners, conflicts = promoters.promote_at_once(registry, candidates, expected=3)

Each process is spawned (a fresh interpreter: no storage client, file handle or lock inherited
from the test process), builds its own Storage from the URI, and waits at a barrier with the
others before promoting, so all of them read the same alias and race for its one swap. This
module imports only cluster/ so that a process starts in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from cluster.errors import ConflictError
from cluster.registry import Registry, VersionLayout
from cluster.storage import Storage

_barrier = None  # set in each process by _join_race


class PromoterProcesses:
    """`count` processes that promote `digits@production` together, once per call."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")
        self.count = count
        self._pool = ProcessPoolExecutor(
            count,
            mp_context=context,
            initializer=_join_race,
            initargs=(context.Barrier(count),),
        )

    def __enter__(self) -> PromoterProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)

    def promote_at_once(
        self, registry: Registry, candidates: list[int], *, expected: int
    ) -> tuple[list[int], list[str]]:
        """Promote each candidate from its own process: (winning versions, conflict messages).
        A process blocked at the barrier takes no second task, so each gets exactly one."""
        assert len(candidates) == self.count
        uri, layout = registry.storage.uri, registry.layout
        futures = [
            self._pool.submit(_promote, uri, layout, version, expected) for version in candidates
        ]
        results = [future.result(timeout=120) for future in futures]
        winners = [result for result in results if isinstance(result, int)]
        return winners, [result for result in results if isinstance(result, str)]


def _join_race(barrier) -> None:
    global _barrier
    _barrier = barrier


def _promote(uri: str, layout: VersionLayout, version: int, expected: int) -> int | str:
    registry = Registry(Storage(uri), layout=layout)
    _barrier.wait(timeout=60)
    try:
        registry.promote("digits", "production", version, expected=expected)
        return version
    except ConflictError as error:
        return str(error)

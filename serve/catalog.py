"""Which models an app of many models serves, by name, and what its replicas did with them.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_multimodel.py -q

    catalog = Catalog(["digits@production", "wine:3"])   # ServeArgs.models, checked
    catalog.ref("digits")                                 # ModelRef digits@production
    catalog.ref("cats", known=[...])                      # RequestError 404 naming the models
    Catalog(["all"]).ref("iris", known=registry.models()) # every model, each at its latest

Pure: no Ray, no storage. serve/multi.py's router refuses names here before anything is sent
to a replica, and its replicas build a model's ref with the same `ref`, so both agree on what
a name means. `ModelCounts` is a replica's record of loads and evictions (Ray Serve's
multiplexer decides them; raylane counts them, GET /v1/models/NAME shows them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cluster.registry import ModelRef
from serve.config import ALL_MODELS
from serve.schemas import RequestError

NAMES_SHOWN = 20  # an unknown name's 404 lists at most this many of the served names


class Catalog:
    """The models served by name: the refs listed, or every model of the registry."""

    def __init__(self, models: Sequence[str]):
        self.every = list(models) == [ALL_MODELS]
        refs = [] if self.every else [ModelRef.parse(model) for model in models]
        self.refs = {ref.name: ref for ref in refs}

    def names(self, known: Sequence[str] = ()) -> list[str]:
        """The names served; with 'all', those of `known` (the registry's models)."""
        return sorted(known) if self.every else list(self.refs)

    def ref(self, name: str, known: Sequence[str] | None = None) -> ModelRef:
        """The ref a name is served at. With `known` (the registry's models, for 'all'), a name
        that is not served is a 404 that names the ones that are."""
        if not self.every and name in self.refs:
            return self.refs[name]
        if self.every and (known is None or name in known):
            return ModelRef.parse(name)
        served = self.names(known or ())
        listed = ", ".join(served[:NAMES_SHOWN]) or "none yet"
        if len(served) > NAMES_SHOWN:
            listed += f" and {len(served) - NAMES_SHOWN} more"
        raise RequestError(
            404, f"no model {name!r} here; this app serves: {listed} (GET /v1/models lists them)"
        )


@dataclass
class ModelCounts:
    """One replica's loads (first use, or use after an eviction) and evictions, by model."""

    loads: Counter = field(default_factory=Counter)
    evictions: Counter = field(default_factory=Counter)

    def loaded(self, name: str) -> None:
        self.loads[name] += 1

    def evicted(self, name: str) -> None:
        self.evictions[name] += 1

    def describe(self, loaded: Sequence[str]) -> dict:
        """What GET /v1/models/NAME shows of the replica that answered."""
        return {
            "loaded": sorted(loaded),
            "loads": dict(self.loads),
            "evictions": dict(self.evictions),
        }

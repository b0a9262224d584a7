"""Many models in one app, without Ray: the settings, which names are served (and the 404 for
the others), a replica's load and eviction record, and `raylane serve --models` refusing a
model that does not resolve before it starts Ray.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_multimodel.py -q
"""

from __future__ import annotations

import pytest
from helpers import digits_checkpoint

from cluster.errors import ConfigError, NotFoundError
from serve.catalog import NAMES_SHOWN, Catalog, ModelCounts
from serve.config import ServeArgs
from serve.schemas import RequestError
from workloads.checkpoint import open_registry

# The README's command ("Many models in one app"), as a test runs it.
README_COMMAND = [
    "--models", "digits@production,wine@production", "--max-models-per-replica", "2",
    "--app-name", "models", "--route-prefix", "/models",
]  # fmt: skip


def test_models_are_a_list_a_comma_separated_string_or_all():
    assert ServeArgs.parse({"models": "a@production, b:3,c"}).models == ["a@production", "b:3", "c"]
    assert ServeArgs.parse({"models": ["a", "b@staging"]}).models == ["a", "b@staging"]
    assert ServeArgs.parse({"models": "all"}).models == ["all"]
    args = ServeArgs.parse({"models": "a", "app_name": "team-a", "route_prefix": "/team-a"})
    assert (args.max_models_per_replica, args.app_name, args.route_prefix) == (
        3,
        "team-a",
        "/team-a",
    )
    assert ServeArgs.parse({"model": "a"}).models is None  # the one-model app, as before


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "set exactly one of `model` (one model per app) and `models`"),
        ({"model": "a", "models": "b"}, "set exactly one of `model`"),
        ({"models": "a,a:2"}, "models: a listed twice; one ref per model name"),
        ({"models": "all,a"}, "models: at least one ref, or 'all' on its own"),
        ({"models": ""}, "models: at least one ref"),
        ({"models": "Digits"}, "models: malformed model reference 'Digits'"),
        ({"models": 3}, "models: a list of NAME@ALIAS / NAME:VERSION / NAME refs, or 'all'"),
        ({"models": "a", "max_models_per_replica": 0}, "max_models_per_replica: Input should be"),
        ({"model": "a", "app_name": "my app"}, "app_name: use letters, digits"),
        ({"model": "a", "route_prefix": "team"}, "route_prefix: a path such as / or /team-a"),
        ({"model": "a", "route_prefix": "/team/"}, "route_prefix: a path such as"),
    ],
)
def test_bad_multi_model_settings_are_one_line_naming_the_field(args, error):
    with pytest.raises(ConfigError) as refused:
        ServeArgs.parse(args)
    assert error in str(refused.value) and "\n" not in str(refused.value)


def test_a_listed_name_is_served_at_its_ref_and_another_is_a_404_naming_the_served():
    catalog = Catalog(["digits@production", "wine:3"])
    assert (
        str(catalog.ref("digits")) == "digits@production" and str(catalog.ref("wine")) == "wine:3"
    )
    assert catalog.names() == ["digits", "wine"]
    with pytest.raises(RequestError) as refused:
        catalog.ref("cats")
    assert refused.value.status_code == 404
    assert "no model 'cats' here; this app serves: digits, wine" in str(refused.value)


def test_all_serves_every_registered_model_at_its_latest_version():
    catalog = Catalog(["all"])
    assert str(catalog.ref("iris", known=["iris", "digits"])) == "iris"
    assert catalog.names(["iris", "digits"]) == ["digits", "iris"]
    with pytest.raises(RequestError, match="this app serves: digits, iris"):
        catalog.ref("cats", known=["iris", "digits"])
    many = [f"m{i:03d}" for i in range(NAMES_SHOWN + 5)]
    with pytest.raises(RequestError, match="m019 and 5 more"):
        catalog.ref("cats", known=many)


def test_a_replicas_record_counts_loads_and_evictions_by_model():
    counts = ModelCounts()
    for name in ("a", "b", "c", "a"):  # room for two: c evicts a, a evicts b
        counts.loaded(name)
    counts.evicted("a")
    counts.evicted("b")
    assert counts.describe(loaded=["c", "a"]) == {
        "loaded": ["a", "c"],
        "loads": {"a": 2, "b": 1, "c": 1},
        "evictions": {"a": 1, "b": 1},
    }


def test_build_app_with_models_is_the_router_and_pool_app():
    from serve.app import build_app
    from serve.command import parse_command

    args, where = parse_command([*README_COMMAND, "--num-replicas", "2"])
    assert args.models == ["digits@production", "wine@production"] and args.num_replicas == 2
    assert (args.max_models_per_replica, args.app_name, args.route_prefix) == (
        2,
        "models",
        "/models",
    )
    assert where["port"] == 8000 and where["host"] == "127.0.0.1"
    assert build_app(args) is not None


def test_raylane_serve_models_fails_fast_on_a_ref_that_does_not_resolve(local_storage, tmp_path):
    from serve.app import main

    registry = open_registry(local_storage)
    registry.register("digits", digits_checkpoint(tmp_path / "v1", seed=1, steps=1), lineage={})
    registry.promote("digits", "production", 1)
    with pytest.raises(NotFoundError, match="wine"):
        main([*README_COMMAND, "--storage", local_storage.uri])
    with pytest.raises(ConfigError, match="set exactly one of `model`"):
        main(["--storage", local_storage.uri])

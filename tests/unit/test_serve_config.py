"""Serving settings without Ray: serve/config.yaml against Ray's own schema, the args that
become deployment options, and `raylane serve` refusing bad input before it starts Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import digits_checkpoint

from cluster.errors import ConfigError, NotFoundError
from serve.config import ServeArgs
from workloads.checkpoint import open_registry

CONFIG_YAML = Path(__file__).parents[2] / "serve" / "config.yaml"
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2}


def test_config_yaml_validates_against_ray_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_YAML.read_text()))
    [app] = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("raylane", "/", "serve.app:build_app")
    args = ServeArgs.parse(app.args)  # the args are ours to validate: every field known
    assert args.model == "digits@production" and args.max_ongoing_requests >= args.max_batch_size


def test_build_app_turns_args_into_deployment_options():
    from serve.app import build_app, deployment_options

    args = ServeArgs.parse(
        {"model": "digits:3", "num_cpus": 0.5, "autoscaling_config": AUTOSCALING}
    )
    options = deployment_options(args)
    assert options["autoscaling_config"] == AUTOSCALING and "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert options["user_config"]["model"] == "digits:3"
    assert build_app({"model": "digits@production"}) is not None
    with pytest.raises(ConfigError, match=r"max_ongoing_requests \(4\) must be >= max_batch"):
        build_app({"model": "digits@production", "max_ongoing_requests": 4})


def test_raylane_serve_fails_fast_before_starting_ray(local_storage, tmp_path):
    from serve.app import main

    registry = open_registry(local_storage)
    registry.register("digits", digits_checkpoint(tmp_path / "v1", seed=1, steps=1), lineage={})
    with pytest.raises(NotFoundError, match="has no alias 'staging'; aliases: none yet"):
        main(["--model", "digits@staging", "--storage", local_storage.uri])
    with pytest.raises(ConfigError, match="max_ongoing_requests \\(64\\) must be >="):
        main(["--model", "digits:1", "--storage", local_storage.uri, "--max-batch-size", "100"])
    with pytest.raises(ConfigError, match="max_replicas"):
        main(["--model", "digits:1", "--storage", local_storage.uri, "--max-replicas", "0"])

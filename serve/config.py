"""The typed serving config: `serve.app:build_app`'s args and a deployment's user_config.

    args = ServeArgs.parse({"model": "digits@production", "max_batch_size": 32})
    dynamic = parse_dynamic({"model": "digits:4"})       # what reconfigure() accepts

`raylane serve` generates its flags from ServeArgs' fields (names, defaults and help have one
source), and serve/config.yaml's `args:` are validated against the same model in the tests.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from cluster.config import Strict, validate
from cluster.errors import ConfigError
from cluster.registry import ModelRef

ALL_MODELS = "all"


class ServeArgs(Strict):
    """Arguments of `serve.app:build_app` (the `args:` of serve/config.yaml, RayService)."""

    model: str | None = Field(
        default=None,
        description="NAME@ALIAS (follows the alias), NAME:VERSION or NAME (latest); or `models`",
    )
    models: list[str] | None = Field(
        default=None,
        description="many models in one app (serve/multi.py): refs as for `model`, comma-"
        "separated or a list, or 'all' (every model of the registry, each at its latest)",
    )
    max_models_per_replica: int = Field(
        default=3,
        ge=1,
        description="with `models`: models a replica keeps loaded; past it, the least "
        "recently used one is evicted",
    )
    app_name: str = Field(
        default="raylane",
        description="Serve application name (`raylane serve`; in a Serve config, the "
        "application's own `name`): another name deploys beside, not over, this one",
    )
    route_prefix: str = Field(
        default="/",
        description="URL prefix of the app's routes (`raylane serve`; in a Serve config, the "
        "application's own `route_prefix`)",
    )
    storage: str | None = Field(
        default=None, description="storage URI; default $RAYLANE_STORAGE or ./artifacts"
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="requests per batch")
    batch_wait_timeout_s: float = Field(
        default=0.002,
        ge=0,
        le=10,
        description="how long an idle model waits for more requests to batch with",
    )
    max_ongoing_requests: int = Field(
        default=64, ge=1, description="requests a replica holds at once; >= max_batch_size"
    )
    max_queued_requests: int = Field(
        default=-1, ge=-1, description="requests queued per caller before 503s; -1 = no limit"
    )
    num_replicas: int = Field(default=1, ge=1, description="fixed replicas without autoscaling")
    autoscaling_config: dict[str, Any] | None = Field(
        default=None,
        description="Ray Serve autoscaling: min_replicas, max_replicas, target_ongoing_requests, "
        "upscale_delay_s, downscale_delay_s, ...",
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica (fractions allowed)")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica; > 0 serves on CUDA")
    api_key_env: str | None = Field(
        default="RAYLANE_API_KEY",
        description="env var holding the API key on the replicas; unset or empty: no auth",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger bodies get 413")
    max_instances: int = Field(default=256, ge=1, description="instances per request")
    watch_interval_s: float = Field(
        default=10.0, ge=0, description="poll the alias this often for a new version; 0 = off"
    )
    custom_model_modules: list[str] = Field(
        default=[],
        description="module prefixes whose custom model classes replicas may import (off: a "
        "registry entry never chooses what code runs; see workloads/trust.py)",
    )

    _check_model = field_validator("model")(
        classmethod(lambda cls, value: value if value is None else _model_ref(value))
    )

    @field_validator("models", mode="before")
    @classmethod
    def _check_models(cls, value: Any) -> list[str] | None:
        return value if value is None else model_list(value)

    @field_validator("app_name")
    @classmethod
    def _check_app_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("use letters, digits, '_', '.', '-'")
        return value

    @field_validator("route_prefix")
    @classmethod
    def _check_route_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"/|(/[A-Za-z0-9_.~-]+)+", value):
            raise ValueError(
                "a path such as / or /team-a (a leading '/', no "
                "trailing '/', letters, digits, '_', '.', '~', '-')"
            )
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"api_key_env {value!r} is not an environment variable name")
        return value or None

    @field_validator("autoscaling_config")
    @classmethod
    def _check_autoscaling(cls, value: dict | None) -> dict | None:
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig  # Ray's own rules are the final word

        AutoscalingConfig(**value)
        return value

    @model_validator(mode="after")
    def _check_batching(self) -> ServeArgs:
        check_batch_fits(self.max_batch_size, self.max_ongoing_requests)
        if (self.model is None) == (self.models is None):
            raise ValueError(
                "set exactly one of `model` (one model per app) and `models` (many models "
                "per app, a list or 'all')"
            )
        return self

    @classmethod
    def parse(cls, args: dict | ServeArgs) -> ServeArgs:
        """Validate, turning pydantic's error into a ConfigError that names each field."""
        if isinstance(args, ServeArgs):
            return args
        return validate(cls, args, source="serve args")

    def dynamic(self) -> dict:
        """The settings a running replica takes through `reconfigure` (user_config)."""
        return {key: getattr(self, key) for key in DynamicConfig.model_fields}


class DynamicConfig(Strict):
    """A deployment's `user_config`: changes reach running replicas without a restart.
    Keys left out keep the values the replica was started with (its ServeArgs)."""

    model: str | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    batch_wait_timeout_s: float | None = Field(default=None, ge=0, le=10)
    watch_interval_s: float | None = Field(default=None, ge=0)

    _check_model = field_validator("model")(
        classmethod(lambda cls, value: value if value is None else _model_ref(value))
    )


def _model_ref(value: str) -> str:
    try:
        return str(ModelRef.parse(value))
    except ConfigError as error:
        raise ValueError(str(error)) from None


def model_list(value: Any) -> list[str]:
    """ "a@production, b:3" or ["a@production", "b:3"] or "all" -> the refs, checked: no name
    twice (a replica serves a model by its name), and "all" alone."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError("a list of NAME@ALIAS / NAME:VERSION / NAME refs, or 'all'")
    refs = [item.strip() for item in items if item.strip()]
    if refs == [ALL_MODELS]:
        return refs
    if not refs or ALL_MODELS in refs:
        raise ValueError("at least one ref, or 'all' on its own")
    parsed = [ModelRef.parse(_model_ref(ref)) for ref in refs]
    names = [ref.name for ref in parsed]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed twice; one ref per model name")
    return [str(ref) for ref in parsed]


def check_batch_fits(max_batch_size: int, max_ongoing_requests: int) -> None:
    if max_ongoing_requests < max_batch_size:
        raise ValueError(
            f"max_ongoing_requests ({max_ongoing_requests}) must be >= max_batch_size "
            f"({max_batch_size}): a replica never holds more requests than "
            "max_ongoing_requests, so larger batches could never fill"
        )


def parse_dynamic(values: Any) -> DynamicConfig:
    return validate(DynamicConfig, values or {}, source="user_config")

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


class ServeArgs(Strict):
    """Arguments of `serve.app:build_app` (the `args:` of serve/config.yaml, RayService)."""

    model: str = Field(description="NAME@ALIAS (follows the alias), NAME:VERSION or NAME (latest)")
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

    _check_model = field_validator("model")(classmethod(lambda cls, value: _model_ref(value)))

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


def check_batch_fits(max_batch_size: int, max_ongoing_requests: int) -> None:
    if max_ongoing_requests < max_batch_size:
        raise ValueError(
            f"max_ongoing_requests ({max_ongoing_requests}) must be >= max_batch_size "
            f"({max_batch_size}): a replica never holds more requests than "
            "max_ongoing_requests, so larger batches could never fill"
        )


def parse_dynamic(values: Any) -> DynamicConfig:
    return validate(DynamicConfig, values or {}, source="user_config")

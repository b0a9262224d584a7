"""Search spaces and sweep configs: pure logic, no Ray at import time.

A sweep config names a training preset and the training fields to vary, by their dotted path
in the training config (any field may be swept):

    space:
      train.lr:           {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      train.batch_size:   {type: choice, values: [32, 64, 128]}
      train.weight_decay: {type: loguniform, low: 1.0e-6, high: 1.0e-2}
      model.dropout:      {type: uniform, low: 0.0, high: 0.3}

Types: loguniform, uniform, randint (low/high), choice (random pick from values), grid
(every one of values, each num_samples times).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.errors import ConfigError
from workloads.config import JobConfig, read_yaml, validate

SWEEP_PRESETS = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Strict):
    """One searched dimension."""

    type: Literal["loguniform", "uniform", "choice", "randint", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"a '{self.type}' needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(
                f"'{self.type}' needs low < high (got low={self.low}, high={self.high})"
            )
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("'loguniform' needs low > 0")
        return self

    def to_tune(self):
        from ray import tune as ray_tune

        if self.type == "choice":
            return ray_tune.choice(self.values)
        if self.type == "grid":  # every value, num_samples times each
            return ray_tune.grid_search(self.values)
        if self.type == "randint":
            return ray_tune.randint(int(self.low), int(self.high))
        return getattr(ray_tune, self.type)(self.low, self.high)


class Scheduler(_Strict):
    """ASHA: stop the worse trials early, at rungs grace_period * reduction_factor^k epochs."""

    asha: bool = True
    grace_period: int = Field(default=1, gt=0, description="epochs before a trial may be stopped")
    reduction_factor: float = Field(default=2.0, gt=1.0)
    max_epochs: int | None = Field(default=None, gt=0, description="default: train.epochs")


class SweepConfig(_Strict):
    """A sweep: the training preset, what to vary, how many trials, how to pick the best."""

    name: str = "sweep"
    train_config: str = Field(default="digits-cnn", description="training preset or YAML path")
    overrides: list[str] = Field(default=[], description="key=value applied to every trial")
    space: dict[str, Param] = Field(default_factory=lambda: default_space())
    num_samples: int = Field(default=8, gt=0, description="number of trials")
    metric: Literal["val_accuracy", "val_f1_macro", "val_auc_roc", "val_loss"] = "val_accuracy"
    search: Literal["random", "optuna"] = "random"
    scheduler: Scheduler = Scheduler()
    max_concurrent_trials: int | None = Field(default=None, gt=0, description="default: derived")
    seed: int = 0

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "val_loss" else "max"


def default_space() -> dict[str, Param]:
    return {
        "train.lr": Param(type="loguniform", low=1e-4, high=1e-2),
        "train.batch_size": Param(type="choice", values=[32, 64, 128]),
        "train.weight_decay": Param(type="loguniform", low=1e-6, high=1e-2),
        "model.dropout": Param(type="uniform", low=0.0, high=0.3),
    }


def load_sweep_config(preset_or_path: str, overrides: list[str] | None = None) -> SweepConfig:
    from workloads.config import apply_overrides

    data = apply_overrides(read_yaml(preset_or_path, SWEEP_PRESETS), list(overrides or []))
    data.setdefault("name", Path(preset_or_path).stem)
    return validate(SweepConfig, data, source=f"sweep config {preset_or_path!r}")


def base_training_config(sweep: SweepConfig) -> dict[str, Any]:
    """The training config every trial starts from, with the sweep's epochs applied."""
    from workloads.config import load_job_config

    job = load_job_config(sweep.train_config, sweep.overrides)
    data = job.model_dump()
    if sweep.scheduler.max_epochs:
        data["train"]["epochs"] = sweep.scheduler.max_epochs
    data["train"]["metric"] = sweep.metric
    check_space(sweep.space, data)
    return data


def check_space(space: dict[str, Param], base: dict[str, Any]) -> None:
    """Every searched key must name an existing training field (fail before any trial runs)."""
    for key, param in space.items():
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(
                f"space key {key!r} is not a training config field; use a dotted path such as "
                "train.lr, train.batch_size, train.weight_decay or model.dropout"
            )
        if param.type in ("choice", "grid"):
            continue
        sample = trial_config(base, {key: param.low})
        validate(JobConfig, sample, source=f"space {key!r} at low={param.low}")


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str | None = None) -> dict:
    """`base` with the sampled values set at their dotted paths."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if name:
        data["name"] = name
    return data


def tune_space(space: dict[str, Param]) -> dict[str, Any]:
    """Ray Tune's param_space. Keys keep their dots; Tune treats them as flat names."""
    return {key: param.to_tune() for key, param in space.items()}

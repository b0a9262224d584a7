"""The typed sweep config: which training preset, what to vary, how to search and stop.

    sweep = load_sweep_config("digits-sweep", ["num_samples=16", "scheduler.grace_period=2"])

A preset is a name in `tune/configs/` (digits-sweep, debug-sweep) or a YAML file path. The
searched fields are named by their dotted path in the training config (any field may be
swept), each with a distribution:

    space:
      train.lr:           {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      train.batch_size:   {type: choice, values: [32, 64, 128]}
      model.dropout:      {type: uniform, low: 0.0, high: 0.3}

Types: loguniform, uniform, randint (low/high), choice (random pick from values), grid
(every one of values, each num_samples times). Pure: no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cluster.config import Metric, Strict, apply_overrides, mode_of, read_yaml, validate

SWEEP_PRESETS = Path(__file__).parent / "configs"


class Param(Strict):
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


class Scheduler(Strict):
    """ASHA: stop the worse trials early, at rungs grace_period * reduction_factor^k epochs."""

    asha: bool = True
    grace_period: int = Field(default=1, gt=0, description="epochs before a trial may be stopped")
    reduction_factor: float = Field(default=2.0, gt=1.0)
    max_epochs: int | None = Field(default=None, gt=0, description="default: train.epochs")


def default_space() -> dict[str, Param]:
    return {
        "train.lr": Param(type="loguniform", low=1e-4, high=1e-2),
        "train.batch_size": Param(type="choice", values=[32, 64, 128]),
        "train.weight_decay": Param(type="loguniform", low=1e-6, high=1e-2),
        "model.dropout": Param(type="uniform", low=0.0, high=0.3),
    }


class SweepConfig(Strict):
    """A sweep: the training preset, what to vary, how many trials, how to pick the best."""

    name: str = "sweep"
    train_config: str = Field(default="digits-cnn", description="training preset or YAML path")
    overrides: list[str] = Field(default=[], description="key=value applied to every trial")
    space: dict[str, Param] = Field(default_factory=default_space)
    num_samples: int = Field(default=8, gt=0, description="number of trials")
    metric: Metric = "val_accuracy"
    search: Literal["random", "optuna"] = "random"
    scheduler: Scheduler = Scheduler()
    max_concurrent_trials: int | None = Field(default=None, gt=0, description="default: derived")
    seed: int = 0

    @property
    def mode(self) -> Literal["min", "max"]:
        return mode_of(self.metric)


def sweep_presets() -> list[str]:
    return sorted(p.stem for p in SWEEP_PRESETS.glob("*.yaml"))


def load_sweep_config(preset_or_path: str, overrides: list[str] | None = None) -> SweepConfig:
    data = apply_overrides(read_yaml(preset_or_path, SWEEP_PRESETS), list(overrides or []))
    data.setdefault("name", Path(preset_or_path).stem)
    return validate(SweepConfig, data, source=f"sweep config {preset_or_path!r}")

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
(every one of values, each num_samples times).

How a trial trains (`trial_mode`): `in_trial` runs one worker's epoch loop inside the Tune trial
itself, on data held in memory (workloads/intrial.py): a trial starts in about a second instead
of ~20, and trial processes are reused; a trial that fails is retried by Tune from its newest
checkpoint, not restarted by Ray Train. `trainer` fits a Ray Train TorchTrainer per trial (any
number of workers, DDP or FSDP, worker restarts by train.max_failures). `auto` (the default)
picks in_trial when every trial has one DDP worker (train.num_workers == 1, not swept). Pure: no
Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cluster.config import Metric, Strict, apply_overrides, mode_of, read_yaml, validate
from cluster.errors import ConfigError

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
    trial_mode: Literal["auto", "in_trial", "trainer"] = Field(
        default="auto",
        description="in_trial: train inside the Tune trial, no Ray Train (one worker only); "
        "trainer: a Ray Train run per trial; auto: in_trial when train.num_workers == 1",
    )

    @property
    def mode(self) -> Literal["min", "max"]:
        return mode_of(self.metric)


def resolve_trial_mode(sweep: SweepConfig, train: dict) -> Literal["in_trial", "trainer"]:
    """The trial mode for trials that start from the training settings `train`."""
    varies = [key for key in ("train.num_workers", "train.strategy") if key in sweep.space]
    single = train["num_workers"] == 1 and train["strategy"] == "ddp" and not varies
    if sweep.trial_mode == "auto":
        return "in_trial" if single else "trainer"
    if sweep.trial_mode == "in_trial" and not single:
        raise ConfigError(
            "trial_mode: in_trial trains one worker inside each trial, but the trials have "
            f"train.num_workers={train['num_workers']}, train.strategy={train['strategy']}"
            + (f" and sweep {', '.join(varies)}" if varies else "")
            + ": set train.num_workers=1 and train.strategy=ddp, or trial_mode=trainer"
        )
    return sweep.trial_mode


def sweep_presets() -> list[str]:
    return sorted(p.stem for p in SWEEP_PRESETS.glob("*.yaml"))


def load_sweep_config(preset_or_path: str, overrides: list[str] | None = None) -> SweepConfig:
    data = apply_overrides(read_yaml(preset_or_path, SWEEP_PRESETS), list(overrides or []))
    data.setdefault("name", Path(preset_or_path).stem)
    return validate(SweepConfig, data, source=f"sweep config {preset_or_path!r}")

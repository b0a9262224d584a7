"""From a sweep config to what Tune samples, and from a sample back to a training config.

    base = base_training_config(sweep)          # the preset every trial starts from, checked
    param_space = tune_space(sweep.space)       # Ray Tune distributions
    data = trial_config(base, {"train.lr": 0.003}, name="trial-ab12")

Ray is imported only inside `to_tune`, so the rest is tested without it.
"""

from __future__ import annotations

import copy
from typing import Any

from cluster.config import set_dotted, validate
from cluster.errors import ConfigError
from tune.config import Param, SweepConfig
from workloads.config import JobConfig, load_job_config


def base_training_config(sweep: SweepConfig) -> dict[str, Any]:
    """The training config every trial starts from, with the sweep's epochs and metric."""
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
            continue  # a bad value there fails its own trials, reported, while the rest go on
        # high is exclusive for every range type, so low is a value a trial can really get.
        sample = trial_config(base, {key: param.low})
        validate(JobConfig, sample, source=f"space {key!r} at low={param.low}")


def trial_config(base: dict[str, Any], params: dict[str, Any], name: str | None = None) -> dict:
    """`base` with the sampled values set at their dotted paths."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    if name:
        data["name"] = name
    return data


def to_tune(param: Param):
    """One Param as a Ray Tune distribution."""
    from ray import tune as ray_tune

    if param.type == "choice":
        return ray_tune.choice(param.values)
    if param.type == "grid":  # every value, num_samples times each
        return ray_tune.grid_search(param.values)
    if param.type == "randint":
        return ray_tune.randint(int(param.low), int(param.high))
    return getattr(ray_tune, param.type)(param.low, param.high)


def tune_space(space: dict[str, Param]) -> dict[str, Any]:
    """Ray Tune's param_space. Keys keep their dots; Tune treats them as flat names."""
    return {key: to_tune(param) for key, param in space.items()}

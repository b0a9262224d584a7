"""Sweep configs and search spaces (tune/config.py, tune/space.py): pure, no Ray but the
distribution objects Ray Tune samples from."""

from __future__ import annotations

import pytest

from cluster.config import validate
from cluster.errors import ConfigError
from tune.config import (
    Param,
    SweepConfig,
    load_sweep_config,
    resolve_trial_mode,
    sweep_presets,
)
from tune.space import base_training_config, trial_config, tune_space


def test_every_sweep_preset_loads_and_its_space_fits_its_training_config():
    assert {"digits-sweep", "debug-sweep"} <= set(sweep_presets())
    for name in sweep_presets():
        sweep = load_sweep_config(name)
        base = base_training_config(sweep)
        assert base["train"]["metric"] == sweep.metric
        for key in sweep.space:
            section, field = key.split(".")
            assert field in base[section]


def test_max_epochs_and_metric_reach_every_trial():
    sweep = load_sweep_config(
        "debug-sweep", ["scheduler.max_epochs=7", "metric=val_loss", "num_samples=3"]
    )
    base = base_training_config(sweep)
    assert (base["train"]["epochs"], base["train"]["metric"]) == (7, "val_loss")
    assert sweep.mode == "min" and sweep.num_samples == 3


def test_trial_config_sets_dotted_paths_without_touching_the_base():
    base = {"name": "b", "train": {"lr": 0.1, "epochs": 2}, "model": {"dropout": 0.0}}
    trial = trial_config(base, {"train.lr": 0.003, "model.dropout": 0.2}, name="trial-1")
    assert trial == {
        "name": "trial-1",
        "train": {"lr": 0.003, "epochs": 2},
        "model": {"dropout": 0.2},
    }
    assert base["train"]["lr"] == 0.1 and base["name"] == "b"


def test_tune_space_maps_each_type_to_a_distribution_that_samples_in_range():
    space = tune_space(
        {
            "train.lr": Param(type="loguniform", low=1e-4, high=1e-2),
            "model.dropout": Param(type="uniform", low=0.0, high=0.3),
            "train.batch_size": Param(type="choice", values=[32, 64]),
            "train.epochs": Param(type="randint", low=1, high=4),
            "train.seed": Param(type="grid", values=[0, 1]),
        }
    )
    assert 1e-4 <= space["train.lr"].sample() < 1e-2
    assert 0.0 <= space["model.dropout"].sample() < 0.3
    assert space["train.batch_size"].sample() in (32, 64)
    assert space["train.epochs"].sample() in (1, 2, 3)
    assert space["train.seed"] == {"grid_search": [0, 1]}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"space": {"train.lrr": {"type": "uniform", "low": 0, "high": 1}}},
            "'train.lrr' is not a",
        ),
        ({"space": {"train.lr": {"type": "uniform", "low": 1, "high": 0}}}, "needs low < high"),
        ({"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}, "needs low > 0"),
        ({"space": {"train.batch_size": {"type": "choice", "values": []}}}, "non-empty 'values'"),
        ({"space": {"model.dropout": {"type": "uniform", "low": -1, "high": 0.5}}}, "dropout"),
        ({"metric": "accuracy"}, "metric: Input should be 'val_accuracy'"),
        ({"num_samples": 0}, "num_samples: Input should be greater than 0"),
    ],
)
def test_bad_spaces_fail_before_any_trial_with_the_field_named(changes, message):
    data = {"train_config": "debug", **changes}
    with pytest.raises(ConfigError) as caught:
        base_training_config(validate(SweepConfig, data, source="sweep config"))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "overrides, mode",
    [
        (["train.num_workers=1"], "in_trial"),  # auto: one worker trains inside its trial
        (["train.num_workers=2"], "trainer"),
        (["train.num_workers=1", "train.strategy=fsdp"], "trainer"),
        (["train.num_workers=1", "trial_mode=trainer"], "trainer"),
        (
            ["train.num_workers=1", "space={train.num_workers: {type: choice, values: [1, 2]}}"],
            "trainer",
        ),  # fmt: skip
    ],
)
def test_trial_mode_auto_trains_inside_the_trial_only_for_one_ddp_worker(overrides, mode):
    job = [o for o in overrides if o.startswith("train.")]
    rest = [o for o in overrides if not o.startswith("train.")]
    sweep = load_sweep_config("debug-sweep", [f"overrides=[{', '.join(job)}]", *rest])
    assert resolve_trial_mode(sweep, base_training_config(sweep)["train"]) == mode


def test_in_trial_mode_with_two_workers_names_the_fields_and_the_fix():
    sweep = load_sweep_config(
        "debug-sweep", ["overrides=[train.num_workers=2]", "trial_mode=in_trial"]
    )
    with pytest.raises(ConfigError) as caught:
        resolve_trial_mode(sweep, base_training_config(sweep)["train"])
    assert "trial_mode: in_trial" in str(caught.value)
    assert "set train.num_workers=1" in str(caught.value) and "trial_mode=trainer" in str(
        caught.value
    )

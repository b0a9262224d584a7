"""Config loading: presets, overrides, and errors that name the field and the fix."""

from __future__ import annotations

import pytest

from cluster.errors import ConfigError
from workloads.config import load_job_config, presets


def test_every_preset_loads():
    assert {"digits-cnn", "tabular-mlp", "text-transformer", "text-lstm", "debug"} <= set(presets())
    for name in presets():
        assert load_job_config(name).name == name


def test_overrides_are_typed_and_nested():
    config = load_job_config("digits-cnn", ["train.lr=0.01", "model.channels=[8, 16]"])
    assert config.train.lr == 0.01 and config.model.channels == [8, 16]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "train.lrr: unknown field; allowed here: batch_size"),
        (
            "train.precision=fp8",
            "train.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'",
        ),
        ("train.epochs=0", "train.epochs: Input should be greater than 0"),
        ("model.dropout=1.5", "model.dropout: Input should be less than 1"),
        ("data.dataset=mnist", "unknown dataset 'mnist'; allowed: digits, breast-cancer"),
        ("model.family=custom", "needs custom_class"),
        ("train.strategy=zero3", "train.strategy: Input should be 'ddp' or 'fsdp'"),
        ("train.checkpoint_upload=later", "train.checkpoint_upload: Input should be 'sync' or"),
        ("model.rnn_type=rnn", "model.rnn_type: Input should be 'lstm' or 'gru'"),
        ("name=has space", "name: use letters, digits"),
        ("train", "must look like key.sub=value"),
        ("data.rows=500", "data.rows sizes only synthetic-tabular and synthetic-text"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as caught:
        load_job_config("digits-cnn", [override])
    assert message in str(caught.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="pass a preset .*digits-cnn"):
        load_job_config("nope")

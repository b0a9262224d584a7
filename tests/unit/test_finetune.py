"""Fine-tuning from a registered version, without Ray: which layers start afresh, the errors
for a parent that does not fit, loading the parent's weights, freezing, the pretrained lr."""

from __future__ import annotations

import pytest
import torch
from helpers import digits_checkpoint, register_local

from cluster.errors import ConfigError, NotFoundError
from cluster.storage import Storage
from workloads.checkpoint import InputSpec, load_weights, open_registry
from workloads.config import ModelConfig, load_job_config
from workloads.finetune import Parent, check_input, head_layers, plan, resolve_parent
from workloads.models import build_model, model_spec
from workloads.recipe import Recipe, apply, freeze, load_start
from workloads.train import build_parser, config_from_args
from workloads.trust import CodePolicy
from workloads.worker import make_optimizer

DIGITS = {"shape": [1, 8, 8], "dtype": "float32", "class_names": [str(c) for c in range(10)]}


def mlp(num_classes: int, hidden=(32,), shape=(1, 8, 8)) -> dict:
    config = ModelConfig(hidden_sizes=list(hidden), dropout=0.0)
    return model_spec(config, input_shape=list(shape), num_classes=num_classes)


def parent(spec: dict, input_section: dict = DIGITS) -> Parent:
    return Parent("digits:1", "registry/digits/versions/1", {"model": spec, "input": input_section})


def test_a_changed_class_count_reinitialises_exactly_the_head():
    assert head_layers(parent(mlp(10)), mlp(4)) == ("net.4.weight", "net.4.bias")
    assert head_layers(parent(mlp(10)), mlp(10)) == ()


def test_another_architecture_is_one_error_naming_the_layers_and_fields():
    with pytest.raises(ConfigError) as error:
        head_layers(parent(mlp(10, hidden=(32,))), mlp(4, hidden=(64,)))
    message = str(error.value)
    assert "net.1.weight (digits:1 [32, 64], config [64, 64])" in message
    assert "model.hidden_sizes ([32] vs [64])" in message and "\n" not in message
    cnn = model_spec(ModelConfig(family="cnn"), input_shape=[1, 8, 8], num_classes=4)
    with pytest.raises(ConfigError, match="digits:1 is a mlp model, this config builds cnn"):
        head_layers(parent(mlp(10)), cnn)


def test_other_inputs_are_one_error_naming_the_fields():
    data = InputSpec(kind="tabular", shape=(30,), dtype="float32", class_names=("a", "b"))
    with pytest.raises(ConfigError) as error:
        check_input(parent(mlp(10)), data, option="train.init_from")
    assert "input.shape: digits:1 has [1, 8, 8], the data has [30]" in str(error.value)


def test_plan_pins_the_alias_to_a_version_and_says_which_layers_start_afresh(tmp_path, capsys):
    storage = Storage(str(tmp_path / "store"))
    registry = open_registry(storage)
    register_local(registry, digits_checkpoint(tmp_path / "v1", seed=1, steps=5))
    registry.promote("digits", "production", 1)
    config = load_job_config("debug", ["train.init_from=digits@production"])
    data = InputSpec(kind="image", shape=(1, 8, 8), dtype="float32", class_names=("a", "b"))

    recipe = plan(config, mlp(2), data, storage)

    assert recipe.lineage["parent"] == "digits:1" and recipe.lineage["method"] == "finetune"
    assert recipe.reinit == ("net.4.weight", "net.4.bias")
    printed = capsys.readouterr().out
    assert "fine-tuning from digits:1" in printed and "(10 -> 2)" in printed
    assert "net.4.weight, net.4.bias" in printed
    with pytest.raises(NotFoundError, match="nope"):
        resolve_parent(storage, "nope@production")


def test_the_parents_weights_are_loaded_but_the_head_and_pretrained_lr_is_scaled(tmp_path):
    directory = digits_checkpoint(tmp_path / "v1", seed=1, steps=5)
    weights = load_weights(directory)
    model = build_model(mlp(3), policy=CodePolicy.CONFIGURED)
    fresh_head = model.net[4].weight.detach().clone()

    loaded = load_start(model, weights, reinit=("net.4.weight", "net.4.bias"))

    assert loaded == {"net.1.weight", "net.1.bias"}
    assert torch.equal(model.net[1].weight, weights["net.1.weight"])
    assert torch.equal(model.net[4].weight, fresh_head)
    train = load_job_config("debug", ["train.lr=0.01", "train.pretrained_lr_scale=0.1"]).train
    rates = {p.shape: g["lr"] for g in make_optimizer(model, train, pretrained=loaded).param_groups
             for p in g["params"]}  # fmt: skip
    assert rates[torch.Size([32, 64])] == pytest.approx(0.001)
    assert rates[torch.Size([3, 32])] == pytest.approx(0.01)


def test_frozen_layers_do_not_move_and_a_pattern_matching_nothing_is_an_error(tmp_path):
    model = build_model(mlp(10), policy=CodePolicy.CONFIGURED)
    freeze(model, ["net.1.*"])
    before = model.net[1].weight.detach().clone()
    optimizer = make_optimizer(model, load_job_config("debug").train)
    torch.nn.functional.cross_entropy(
        model(torch.randn(8, 1, 8, 8)), torch.zeros(8).long()
    ).backward()
    optimizer.step()

    assert torch.equal(model.net[1].weight, before)
    assert not torch.equal(model.net[4].weight.grad, torch.zeros_like(model.net[4].weight))
    with pytest.raises(ConfigError, match="train.freeze: 'encoder.*' matches no parameter"):
        freeze(model, ["encoder.*"])


def test_apply_without_a_recipe_changes_nothing():
    model = build_model(mlp(10), policy=CodePolicy.CONFIGURED)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = apply(model, Recipe(), load_job_config("debug").train, storage_uri="unused",
                  input_spec=None, device=torch.device("cpu"))  # fmt: skip
    assert hooks.pretrained == frozenset() and hooks.loss_fn is None and not hooks.masks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_init_from_is_a_train_flag_and_a_config_field_checked_as_a_model_reference():
    args = build_parser().parse_args(["--config", "debug", "--init-from", "digits@production"])
    assert config_from_args(args).train.init_from == "digits@production"
    with pytest.raises(ConfigError, match="train.init_from: malformed model reference"):
        load_job_config("debug", ["train.init_from=Digits@@x"])

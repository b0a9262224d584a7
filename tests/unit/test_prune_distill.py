"""Pruning and distillation math, and the one-line errors of their commands, without Ray."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import digits_checkpoint, register_local, tabular_checkpoint

from cluster.errors import ConfigError, NotFoundError
from cluster.storage import Storage
from workloads import distill, prune
from workloads.checkpoint import InputSpec, load_model, open_registry
from workloads.config import ModelConfig
from workloads.models import build_model, count_parameters, model_spec
from workloads.recipe import (
    apply_masks,
    distillation_loss,
    input_adapter,
    magnitude_masks,
    sparsity_of,
)
from workloads.trust import CodePolicy


def trained_mlp(tmp_path):
    model, meta = load_model(digits_checkpoint(tmp_path / "v1", seed=1, steps=20),
                             policy=CodePolicy.CONFIGURED)  # fmt: skip
    return model, meta["model"]


def test_structured_pruning_gives_a_smaller_mlp_whose_outputs_equal_the_masked_model(tmp_path):
    config = ModelConfig(hidden_sizes=[48, 24], dropout=0.0)
    spec = model_spec(config, input_shape=[1, 8, 8], num_classes=10)
    torch.manual_seed(0)
    model = build_model(spec, policy=CodePolicy.CONFIGURED).eval()

    small_spec, weights, kept = prune.prune_neurons(spec, model.state_dict(), 0.5)
    small = build_model(small_spec, policy=CodePolicy.CONFIGURED).eval()
    small.load_state_dict(weights)  # strict: the stored spec rebuilds exactly these weights

    assert small_spec["kwargs"]["hidden_sizes"] == [24, 12]
    assert count_parameters(small) < 0.5 * count_parameters(model)
    with torch.no_grad():  # the masked model: dropped neurons' rows and biases zeroed
        for layer, keep in zip((model.net[1], model.net[4]), kept, strict=True):
            dropped = torch.ones(layer.out_features, dtype=torch.bool)
            dropped[keep] = False
            layer.weight[dropped] = 0
            layer.bias[dropped] = 0
        inputs = torch.randn(16, 1, 8, 8)
        torch.testing.assert_close(small(inputs), model(inputs))


def test_structured_pruning_of_a_cnn_says_to_drop_structured():
    spec = model_spec(ModelConfig(family="cnn"), input_shape=[1, 8, 8], num_classes=10)
    with pytest.raises(ConfigError, match="drop --structured"):
        prune.prune_neurons(spec, {}, 0.5)


def test_global_magnitude_masks_reach_the_sparsity_and_keep_it_after_a_step(tmp_path):
    model, _ = trained_mlp(tmp_path)
    masks = magnitude_masks(model, 0.6)
    apply_masks(model, masks)
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.01)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.zeros(8).long()).backward()
    optimizer.step()
    apply_masks(model, masks)
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.01)
    # Global, not per layer: the layers end up pruned to different degrees.
    per_layer = [float((m == 0).float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05


def test_distillation_loss_blends_soft_targets_and_labels():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    hard = F.cross_entropy(student, labels)

    def loss(alpha, teacher=teacher, temperature=4.0):
        return distillation_loss(student, teacher, labels, temperature=temperature, alpha=alpha)

    torch.testing.assert_close(loss(0.0), hard)
    torch.testing.assert_close(loss(0.7, teacher=student), 0.3 * hard)  # KL to itself is 0
    soft_t, soft_s = F.softmax(teacher / 4, 1), F.softmax(student / 4, 1)
    kl = (soft_t * (soft_t.log() - soft_s.log())).sum(1).mean()
    torch.testing.assert_close(loss(1.0), 16 * kl)


def test_the_teacher_sees_features_standardized_its_own_way():
    def spec(mean, std):
        normalization = {"mean": [mean], "std": [std]}
        return InputSpec(kind="image", shape=(1, 2, 2), dtype="float32", class_names=("a", "b"),
                         normalization=normalization)  # fmt: skip

    raw = torch.rand(3, 1, 2, 2) * 16
    student, teacher = spec(5.0, 4.0), spec(6.0, 5.0)
    adapted = input_adapter(student, teacher)((raw - 5.0) / 4.0)
    torch.testing.assert_close(adapted, (raw - 6.0) / 5.0)


def test_prune_errors_are_one_line(tmp_path):
    storage = str(tmp_path / "store")
    args = ["--model", "digits@production", "--register", "small", "--storage", storage]
    with pytest.raises(ConfigError, match=r"strictly between 0 and 1, got 1.0$"):
        prune.main([*args, "--sparsity", "1"])
    with pytest.raises(NotFoundError, match="digits"):
        prune.main([*args, "--sparsity", "0.5"])
    register_local(open_registry(Storage(storage)), digits_checkpoint(tmp_path / "v1", seed=1))
    with pytest.raises(ConfigError, match="digits:1 records no training config"):
        prune.main([*args[:1], "digits:1", *args[2:], "--sparsity", "0.5"])


def test_a_teacher_with_other_inputs_is_one_error_before_training(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    teacher = tabular_checkpoint(tmp_path / "t", ["a", "b"], mean=[0, 0], std=[1, 1])
    register_local(open_registry(storage), teacher, name="wine")
    with pytest.raises(ConfigError) as error:
        distill.main(["--teacher", "wine:1", "--config", "debug", "--register", "small",
                      "--storage", storage.uri])  # fmt: skip
    message = str(error.value)
    assert message.startswith("--teacher: wine:1 takes other inputs than this run's data")
    assert "input.shape: wine:1 has [2], the data has [1, 8, 8]" in message
    assert "input.class_names" in message and "\n" not in message
    with pytest.raises(ConfigError, match="--alpha is a weight between 0 and 1"):
        distill.main(["--teacher", "wine:1", "--config", "debug", "--register", "small",
                      "--alpha", "2"])  # fmt: skip


def test_a_pruned_checkpoint_whose_meta_lies_about_its_sizes_fails_to_load_clearly(tmp_path):
    from cluster.errors import DataError
    from workloads.checkpoint import load_weights, read_meta, save_checkpoint

    source = digits_checkpoint(tmp_path / "wide", seed=1, steps=2)
    meta = read_meta(source)
    spec, weights, _ = prune.prune_neurons(meta["model"], load_weights(source), 0.5)
    small = build_model(spec, policy=CodePolicy.CONFIGURED)
    small.load_state_dict(weights)
    save_checkpoint(tmp_path / "pruned", model=small, meta={**meta, "model": spec})
    assert count_parameters(load_model(tmp_path / "pruned", policy=CodePolicy())[0]) < 1400

    tampered = {**spec, "kwargs": {**spec["kwargs"], "hidden_sizes": [32]}}  # the parent's
    save_checkpoint(tmp_path / "pruned", model=small, meta={**meta, "model": tampered})
    with pytest.raises(DataError, match="do not fit the model in meta.json"):
        load_model(tmp_path / "pruned", policy=CodePolicy())

"""Model families, specs, the custom plug-in, and that each built-in family actually learns.

Pure torch on CPU, no Ray: specs round-trip through JSON and weights through safetensors,
the same way checkpoints carry them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from cluster.errors import ConfigError, DataError
from workloads.config import ModelConfig
from workloads.models import (
    CNN,
    MLP,
    RNN,
    Transformer,
    build_model,
    count_parameters,
    model_spec,
)
from workloads.step import classification_metrics, predict_logits, train_step
from workloads.trust import CodePolicy

# family -> (config, dataset facts, an input batch of 5)
CASES = {
    "mlp": (
        ModelConfig(family="mlp", hidden_sizes=[32, 16]),
        {"input_shape": [30], "num_classes": 2},
        lambda: torch.randn(5, 30),
    ),
    "cnn": (
        ModelConfig(family="cnn", channels=[8, 16, 16]),
        {"input_shape": [1, 8, 8], "num_classes": 10},
        lambda: torch.randn(5, 1, 8, 8),
    ),
    "transformer": (
        ModelConfig(family="transformer", d_model=16, num_heads=2, num_layers=2),
        {"input_shape": [12], "num_classes": 4, "vocab_size": 50},
        lambda: torch.randint(1, 50, (5, 12)),
    ),
    "rnn": (
        ModelConfig(family="rnn", rnn_type="lstm", d_model=8, hidden_size=12, num_layers=2),
        {"input_shape": [12], "num_classes": 4, "vocab_size": 50},
        lambda: torch.randint(1, 50, (5, 12)),
    ),
}
CLASSES = {"mlp": MLP, "cnn": CNN, "transformer": Transformer, "rnn": RNN}


@pytest.fixture
def user_models(monkeypatch):
    # tests/ is not a package: put it on sys.path the way a user's package would be installed.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))


@pytest.mark.parametrize("family", CASES)
def test_spec_round_trip_rebuilds_the_same_model(family, tmp_path):
    config, facts, batch = CASES[family]
    spec = json.loads(json.dumps(model_spec(config, **facts)))  # meta.json holds it as JSON
    assert spec["family"] == family
    first, second = (
        build_model(spec, policy=CodePolicy.CONFIGURED),
        build_model(spec, policy=CodePolicy.CONFIGURED),
    )
    assert type(first) is CLASSES[family]
    assert str(first) == str(second) and count_parameters(first) == count_parameters(second) > 0

    inputs = batch()
    assert first(inputs).shape == (5, facts["num_classes"])
    save_file(first.state_dict(), tmp_path / "model.safetensors")
    second.load_state_dict(load_file(tmp_path / "model.safetensors"))
    first.eval(), second.eval()
    torch.testing.assert_close(first(inputs), second(inputs), rtol=0, atol=0)


def test_spec_records_dataset_facts():
    spec = model_spec(
        ModelConfig(family="mlp", hidden_sizes=[8]), input_shape=[1, 8, 8], num_classes=10
    )
    assert spec == {
        "family": "mlp",
        "kwargs": {"in_features": 64, "hidden_sizes": [8], "num_classes": 10, "dropout": 0.1},
    }
    config, facts, _ = CASES["transformer"]
    assert model_spec(config, **facts)["kwargs"]["max_len"] == 12


def test_transformer_ignores_padding():
    torch.manual_seed(0)
    config, facts, _ = CASES["transformer"]
    model = build_model(model_spec(config, **facts), policy=CodePolicy.CONFIGURED).eval()
    tokens = torch.randint(1, 50, (3, 8))
    padded = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    # Padding at the end changes neither attention nor the mean-pool.
    torch.testing.assert_close(model(tokens), model(padded), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model(torch.zeros(2, 12, dtype=torch.long))).all()  # all-padding row
    with pytest.raises(ValueError, match="exceeds max_len 12"):
        model(torch.ones(1, 13, dtype=torch.long))


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_never_reads_padding(rnn_type, bidirectional):
    torch.manual_seed(0)
    config = ModelConfig(
        family="rnn", rnn_type=rnn_type, bidirectional=bidirectional, d_model=8, hidden_size=12
    )
    spec = model_spec(config, input_shape=[12], num_classes=3, vocab_size=50)
    assert spec["kwargs"]["rnn_type"] == rnn_type
    model = build_model(spec, policy=CodePolicy.CONFIGURED).eval()
    tokens = torch.randint(1, 50, (3, 8))
    zeros = torch.zeros(3, 4, dtype=torch.long)
    expected = model(tokens)
    # Trailing padding, and padding between and before the tokens: packed away, same logits.
    torch.testing.assert_close(model(torch.cat([tokens, zeros], 1)), expected)
    scattered = torch.cat([zeros[:, :2], tokens[:, :3], zeros[:, 2:], tokens[:, 3:]], 1)
    torch.testing.assert_close(model(scattered), expected)
    assert torch.isfinite(model(torch.zeros(2, 12, dtype=torch.long))).all()  # all-padding row
    # Tokens are read in order: the same tokens reversed give other logits.
    assert not torch.allclose(model(tokens.flip(1)), expected)


def test_custom_model_plugs_in(user_models):
    config = ModelConfig(
        family="custom", custom_class="fixtures_user_model:TinyNet", custom_kwargs={"hidden": 7}
    )
    spec = model_spec(config, input_shape=[3, 4], num_classes=5)
    assert spec == {
        "family": "custom",
        "class": "fixtures_user_model:TinyNet",
        "kwargs": {"input_shape": [3, 4], "num_classes": 5, "hidden": 7},
    }
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    assert type(model).__name__ == "TinyNet"
    assert model(torch.randn(2, 3, 4)).shape == (2, 5)
    assert count_parameters(model) == 12 * 7 + 7 + 7 * 5 + 5


def test_clear_errors(user_models):
    def custom(path, **kwargs):
        config = ModelConfig(family="custom", custom_class=path, custom_kwargs=kwargs)
        return build_model(
            model_spec(config, input_shape=[4], num_classes=2), policy=CodePolicy.CONFIGURED
        )

    with pytest.raises(
        ConfigError, match=r"cannot import custom model class 'nope.module:Class'.*nope"
    ):
        custom("nope.module:Class")
    with pytest.raises(ConfigError, match="has no 'Missing'"):
        custom("fixtures_user_model:Missing")
    with pytest.raises(
        ConfigError, match="'fixtures_user_model:NotAModule' is not a torch.nn.Module"
    ):
        custom("fixtures_user_model:NotAModule")
    with pytest.raises(
        ConfigError, match=r"'fixtures_user_model:TinyNet'.*unexpected keyword.*width"
    ):
        custom("fixtures_user_model:TinyNet", width=3)
    with pytest.raises(ConfigError, match="must not set \\['num_classes'\\]"):
        custom("fixtures_user_model:TinyNet", num_classes=3)
    with pytest.raises(
        ConfigError, match=r"cnn needs image input of shape \[C, H, W\], dataset gives \[64\]"
    ):
        model_spec(ModelConfig(family="cnn"), input_shape=[64], num_classes=10)
    with pytest.raises(ConfigError, match="transformer needs token sequences"):
        model_spec(ModelConfig(family="transformer"), input_shape=[16], num_classes=2)
    with pytest.raises(ConfigError, match="rnn needs token sequences"):
        model_spec(ModelConfig(family="rnn"), input_shape=[16], num_classes=2)
    with pytest.raises(DataError, match="at least 2 classes"):
        model_spec(ModelConfig(), input_shape=[4], num_classes=1)
    with pytest.raises(ConfigError, match="unknown model family 'rnnx'"):
        build_model({"family": "rnnx", "kwargs": {}}, policy=CodePolicy.CONFIGURED)
    with pytest.raises(ConfigError, match=r"cannot build model 'mlp'.*hidden_sizes"):
        build_model(
            {"family": "mlp", "kwargs": {"in_features": 4, "num_classes": 2}},
            policy=CodePolicy.CONFIGURED,
        )


def _fit(model, train, *, epochs, lr, batch_size=32):
    features, labels = train
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            train_step(model, features[batch], labels[batch], optimizer)
    model.eval()


def _accuracy(model, features, labels, num_classes):
    logits = predict_logits(model, features).numpy()
    return classification_metrics(logits, labels.numpy(), num_classes)["accuracy"]


def test_cnn_learns_digits(one_thread):
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, held_out = order[:1400], order[1400:]
    spec = model_spec(
        ModelConfig(family="cnn", channels=[32, 64], dropout=0.1),
        input_shape=[1, 8, 8],
        num_classes=10,
    )
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    _fit(model, (images[train], labels[train]), epochs=8, lr=3e-3)
    assert _accuracy(model, images[held_out], labels[held_out], 10) >= 0.95


def _keyword_task(rows, *, seed, length=24, vocab=30):
    """Label = which of keywords 1..4 occurs most (unique winner) among filler tokens 5..vocab,
    then zero padding: a sequence-level count that the model has to aggregate."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((rows, length), dtype=np.int64)
    labels = np.empty(rows, dtype=np.int64)
    for row in range(rows):
        counts = rng.integers(0, 4, size=4)
        labels[row] = rng.integers(4)
        counts[labels[row]] = counts.max() + 1
        used = rng.integers(counts.sum(), length + 1)
        sequence = np.repeat(np.arange(1, 5), counts)
        sequence = np.concatenate([sequence, rng.integers(5, vocab, size=used - len(sequence))])
        tokens[row, :used] = rng.permutation(sequence)
    return torch.from_numpy(tokens), torch.from_numpy(labels)


def test_transformer_learns_keyword_counts(one_thread):
    torch.manual_seed(0)
    config = ModelConfig(family="transformer", d_model=32, num_heads=4, num_layers=2, dropout=0.0)
    model = build_model(
        model_spec(config, input_shape=[24], num_classes=4, vocab_size=30),
        policy=CodePolicy.CONFIGURED,
    )
    _fit(model, _keyword_task(2000, seed=0), epochs=5, lr=2e-3)
    assert _accuracy(model, *_keyword_task(500, seed=1), 4) >= 0.85


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_rnn_learns_keyword_counts(one_thread, rnn_type):
    torch.manual_seed(0)
    config = ModelConfig(
        family="rnn", rnn_type=rnn_type, d_model=16, hidden_size=32, num_layers=1, dropout=0.0
    )
    spec = model_spec(config, input_shape=[24], num_classes=4, vocab_size=30)
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    _fit(model, _keyword_task(2000, seed=0), epochs=5, lr=5e-3)
    assert _accuracy(model, *_keyword_task(500, seed=1), 4) >= 0.85

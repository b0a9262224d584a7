"""The networks raylane trains: MLP, CNN, Transformer, RNN, plus user models plugged in by name.

    spec = model_spec(config.model, input_shape=[1, 8, 8], num_classes=10)
    model = build_model(spec, policy=CodePolicy.CONFIGURED)   # or the allow-list when loading

Every model here is a plain `nn.Module` that knows nothing about Ray, devices or DDP; the
worker applies those. Inputs: MLP takes float features of any shape (flattened), CNN takes
float images (N, C, H, W), Transformer and RNN (LSTM/GRU) take int64 token ids (N, L) with 0 as
padding.
All return float logits (N, num_classes).

A *model spec* is a JSON-able dict that rebuilds a model with no guesswork; it is stored in
every checkpoint's meta (workloads/checkpoint.py):

    {"family": "cnn", "kwargs": {"in_channels": 1, "height": 8, ...}}
    {"family": "custom", "class": "mypkg.nets:ResNetish", "kwargs": {...}}

User models (family=custom, `model.custom_class: "pkg.module:Class"`) must be `nn.Module`
subclasses, importable on every Ray worker and Serve replica (installed, or shipped with
`runtime_env` py_modules/working_dir), and are called as

    Class(input_shape=[...], num_classes=K, **model.custom_kwargs)

where `input_shape` is the per-example feature shape the dataset gives (e.g. [1, 8, 8] or
[30]) and the forward pass maps a batch (N, *input_shape) to logits (N, K). custom_kwargs
must be JSON-able since they are written into the checkpoint's meta.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import nn

from cluster.errors import ConfigError, DataError
from workloads.config import ModelConfig
from workloads.trust import CodePolicy


class MLP(nn.Module):
    """Flatten, then Linear-ReLU-Dropout blocks, then a Linear head."""

    def __init__(
        self, *, in_features: int, hidden_sizes: list[int], num_classes: int, dropout: float = 0.0
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _groups(channels: int) -> int:
    # GroupNorm rather than BatchNorm: it is per-example, so DDP needs no SyncBatchNorm, and
    # it behaves the same at batch size 1 in Serve as in training. Up to 8 groups that divide.
    return math.gcd(channels, 8)


class CNN(nn.Module):
    """Conv3x3-GroupNorm-ReLU blocks (2x2 max-pool while the map is larger than 2x2),
    global average pool, Linear head. Input (N, C, H, W) floats."""

    def __init__(
        self,
        *,
        in_channels: int,
        height: int,
        width: int,
        channels: list[int],
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        previous, size = in_channels, min(height, width)
        for out in channels:
            blocks += [
                nn.Conv2d(previous, out, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(_groups(out), out),
                nn.ReLU(),
            ]
            # Pooling a 2x2 map down to 1x1 would leave the next conv nothing spatial to see.
            if size > 2:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            previous = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(previous, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class Transformer(nn.Module):
    """Token + learned position embeddings, a pre-norm TransformerEncoder, mean-pool over the
    non-padding tokens, Linear head. Input (N, L) int64 token ids, L <= max_len, 0 = padding."""

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        d_model: int,
        num_heads: int,
        num_layers: int,
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            # Pre-norm trains stably without warmup at the small sizes used here.
            norm_first=True,
        )
        # Nested tensors are not used with norm_first; saying so avoids a warning per build.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)  # pre-norm layers leave the last output unnormalized
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        padding = tokens == 0
        # A row of only padding would make attention softmax over nothing (NaN); let such rows
        # attend everywhere, their pooled vector is zero anyway since no token is kept.
        padding = padding & ~padding.all(dim=1, keepdim=True)
        positions = torch.arange(length, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=padding))
        keep = (tokens != 0).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class RNN(nn.Module):
    """Token embeddings, a (bidirectional) LSTM or GRU over the real tokens only, the final
    hidden state of each direction of the last layer, Linear head. Input (N, L) int64, 0 = pad.

    Padding is removed, not masked after the fact: the non-zero tokens of each row are moved
    to its front (in order) and packed with their true lengths, so the recurrence never steps
    over a padding token wherever it sits, and the backward direction starts at the last real
    token rather than at the end of the padding.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_size: int,
        hidden_size: int,
        num_layers: int,
        num_classes: int,
        rnn_type: str = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if rnn_type not in ("lstm", "gru"):
            raise ValueError(f"rnn_type must be 'lstm' or 'gru', got {rnn_type!r}")
        self.token_embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        recurrent = nn.LSTM if rnn_type == "lstm" else nn.GRU
        self.rnn = recurrent(
            embedding_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # torch applies it between layers only
        )
        directions = 2 if bidirectional else 1
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(directions * hidden_size, num_classes)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens != 0
        # A stable sort of "is padding" moves each row's tokens to the front, order kept.
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
        tokens = tokens.gather(1, order)
        # An all-padding row gets length 1 (one zero embedding): packing refuses length 0.
        lengths = real.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.token_embedding(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        _, state = self.rnn(packed)
        final = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c); GRU: h
        directions = 2 if self.rnn.bidirectional else 1
        # final is (layers * directions, N, H): the last layer's directions, side by side.
        pooled = torch.cat(list(final[-directions:]), dim=1)
        return self.head(pooled)


FAMILIES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "transformer": Transformer,
    "rnn": RNN,
}


def model_spec(
    config: ModelConfig,
    *,
    input_shape: list[int],
    num_classes: int,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """Config + dataset facts (feature shape, class count, vocabulary) -> a model spec."""
    shape = [int(size) for size in input_shape]
    if num_classes < 2:
        raise DataError(f"a classifier needs at least 2 classes, the dataset has {num_classes}")
    common = {"num_classes": int(num_classes), "dropout": config.dropout}
    if config.family == "mlp":
        kwargs = {"in_features": math.prod(shape), "hidden_sizes": list(config.hidden_sizes)}
    elif config.family == "cnn":
        if len(shape) != 3:
            raise ConfigError(
                f"model.family=cnn needs image input of shape [C, H, W], dataset gives {shape}; "
                "use model.family=mlp for flat features"
            )
        channels, height, width = shape
        kwargs = {"in_channels": channels, "height": height, "width": width}
        kwargs |= {"channels": list(config.channels)}
    elif config.family in ("transformer", "rnn"):
        if vocab_size is None or len(shape) != 1:
            raise ConfigError(
                f"model.family={config.family} needs token sequences: input of shape [L] and a "
                f"vocabulary size, dataset gives shape {shape} and vocab_size {vocab_size}"
            )
        kwargs = {"vocab_size": int(vocab_size), "num_layers": config.num_layers}
        if config.family == "transformer":
            kwargs |= {"max_len": shape[0], "d_model": config.d_model}
            kwargs |= {"num_heads": config.num_heads}
        else:
            kwargs |= {"embedding_size": config.d_model, "hidden_size": config.hidden_size}
            kwargs |= {"rnn_type": config.rnn_type, "bidirectional": config.bidirectional}
    else:
        reserved = {"input_shape", "num_classes"} & set(config.custom_kwargs)
        if reserved:
            raise ConfigError(
                f"model.custom_kwargs must not set {sorted(reserved)}: they come from the dataset"
            )
        kwargs = {"input_shape": shape, "num_classes": int(num_classes), **config.custom_kwargs}
        return {"family": "custom", "class": config.custom_class, "kwargs": kwargs}
    return {"family": config.family, "kwargs": kwargs | common}


def build_model(spec: dict[str, Any], *, policy: CodePolicy) -> nn.Module:
    """Rebuild a model from its spec (fresh weights; load a state_dict for trained ones).

    `policy` says whether a custom class may be imported (workloads/trust.py): training passes
    CodePolicy.CONFIGURED, anything that loads a stored checkpoint the operator's allow-list.
    """
    if not (isinstance(spec, dict) and isinstance(spec.get("kwargs"), dict)):
        raise ConfigError(
            f"a model spec is {{'family': ..., 'kwargs': {{...}}}}, got {_clip(repr(spec))}"
        )
    family, kwargs = spec.get("family"), spec["kwargs"]
    if family == "custom":
        policy.check(spec.get("class"))  # before anything is imported
        cls, name = import_model_class(spec.get("class")), spec.get("class")
    elif family in FAMILIES:
        cls, name = FAMILIES[family], family
    else:
        allowed = ", ".join([*FAMILIES, "custom"])
        raise ConfigError(f"unknown model family {_clip(repr(family))}; allowed: {allowed}")
    try:
        return cls(**kwargs)
    except Exception as error:  # user constructors can raise anything; say which model failed
        raise ConfigError(
            f"cannot build model {name!r} with kwargs {_clip(repr(kwargs))}: "
            f"{type(error).__name__}: {_clip(str(error))}"
        ) from None


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def import_model_class(path: Any) -> type[nn.Module]:
    """'pkg.module:Class' -> the class, checked to be an nn.Module subclass."""
    module_name, _, class_name = str(path).partition(":")
    if not (module_name and class_name):
        raise ConfigError(f"custom model class {path!r} must look like 'pkg.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the user module failing as it imports
        raise ConfigError(
            f"cannot import custom model class {path!r}: {type(error).__name__}: {error}; "
            "install its package on every Ray worker and Serve replica "
            "(or ship it with runtime_env py_modules / working_dir)"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(
            f"custom model class {path!r}: module {module_name!r} has no {class_name!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"custom model class {path!r} is not a torch.nn.Module subclass")
    return cls


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())

"""Typed configs for a training job: model, data, training. YAML presets overlay the defaults.

    config = load_job_config("digits-cnn", ["train.epochs=5", "model.dropout=0.2"])

A preset is a name in `workloads/configs/` (digits-cnn, tabular-mlp, text-transformer, debug)
or a path to a YAML file. Overrides are `key.sub=value`, the value parsed as YAML. A wrong key
or value raises ConfigError naming the field and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cluster.config import Metric, Strict, apply_overrides, mode_of, read_yaml, validate
from cluster.config import presets as _presets
from cluster.errors import ConfigError
from cluster.registry import ModelRef
from workloads.datasets import DATASETS

PRESET_DIR = Path(__file__).parent / "configs"
EMBEDDED_DATASETS = tuple(DATASETS)


class ModelConfig(Strict):
    """What network to build; the input and output sizes come from the dataset."""

    family: Literal["mlp", "cnn", "transformer", "rnn", "custom"] = "mlp"
    hidden_sizes: list[int] = Field(default=[128, 64], description="MLP hidden layer widths")
    channels: list[int] = Field(default=[32, 64], description="CNN channels per conv block")
    d_model: int = Field(default=64, gt=0, description="token embedding width (Transformer, RNN)")
    num_heads: int = Field(default=4, gt=0, description="Transformer attention heads")
    num_layers: int = Field(default=2, gt=0, description="Transformer / RNN layers")
    rnn_type: Literal["lstm", "gru"] = Field(default="lstm", description="RNN cell")
    hidden_size: int = Field(default=64, gt=0, description="RNN hidden state per direction")
    bidirectional: bool = Field(default=True, description="RNN reads both directions")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout probability")
    custom_class: str | None = Field(
        default=None, description="'package.module:Class' for family=custom"
    )
    custom_kwargs: dict[str, Any] = Field(default={}, description="constructor kwargs, custom")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.family == "custom" and not self.custom_class:
            raise ValueError("family 'custom' needs custom_class: 'package.module:Class'")
        if self.custom_class and not re.fullmatch(r"[\w.]+:\w+", self.custom_class):
            raise ValueError(
                f"custom_class {self.custom_class!r} must look like 'pkg.module:Class'"
            )
        if self.family == "transformer" and self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads")
        return self


class TextConfig(Strict):
    """How a text column becomes token ids (a subword tokenizer fitted on the training split)."""

    max_length: int = Field(default=64, gt=0, le=4096, description="tokens per text, padded")
    truncation: Literal["right", "left"] = Field(
        default="right", description="right: a long text keeps its beginning; left: its end"
    )
    vocab_size: int = Field(
        default=4000, ge=16, le=1_000_000, description="subword vocabulary size, at most"
    )


class DataConfig(Strict):
    """Where the examples are and which columns hold features and labels."""

    dataset: str = Field(
        default="digits",
        description=f"an embedded dataset ({', '.join(EMBEDDED_DATASETS)}) or 'parquet'",
    )
    path: str | None = Field(
        default=None,
        description="Parquet file/dir URI for dataset=parquet (default: storage datasets/NAME)",
    )
    feature_columns: list[str] = Field(
        default=["features"], description="one list-valued column, or several scalar columns"
    )
    label_column: str = "label"
    rows: int = Field(default=20_000, gt=0, description="rows of synthetic-* datasets")
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    normalize: bool = Field(default=True, description="standardize float features")
    text: TextConfig = Field(default=TextConfig(), description="for a text (string) column")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.dataset not in (*EMBEDDED_DATASETS, "parquet"):
            allowed = ", ".join((*EMBEDDED_DATASETS, "parquet"))
            raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {allowed}")
        if self.dataset == "parquet" and not self.path:
            raise ValueError("dataset 'parquet' needs data.path (a Parquet file or directory URI)")
        sized = [name for name, dataset in DATASETS.items() if dataset.sized]
        if self.rows != DataConfig.model_fields["rows"].default and self.dataset not in sized:
            # `data prepare synthetic-tabular --rows N` then `--set data.rows=N` alone would
            # silently train on the preset's dataset instead.
            raise ValueError(
                f"data.rows sizes only {' and '.join(sized)}, not {self.dataset!r}: add "
                f"data.dataset={sized[0]}"
            )
        return self


class TrainConfig(Strict):
    """How to train: optimization, scale, checkpoints, faults."""

    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0, description="per-worker batch size")
    lr: float = Field(default=1e-3, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(default=1e-4, ge=0.0)
    scheduler: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_epochs: int = Field(default=0, ge=0)
    num_workers: int = Field(default=2, gt=0, description="Ray Train workers (DDP ranks)")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: a full replica per worker; fsdp: parameters, gradients and optimizer "
        "state sharded across workers (FSDP2), for models too large to replicate",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(
        default=0.5, gt=0.0, description="fractional CPUs let small machines run several workers"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="how workers are placed on nodes (Ray placement groups)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on GPUs that support it, else fp16; fp32 on CPU"
    )
    checkpoint_every: int = Field(default=1, gt=0, description="epochs between checkpoints")
    checkpoint_upload: Literal["sync", "async"] = Field(
        default="sync",
        description="async: training goes on while rank 0's checkpoint uploads in a background "
        "thread (pays off for large models)",
    )
    cache_shard_mb: float = Field(
        default=1024,
        ge=0,
        description="keep a worker's data in memory after the first epoch when it is at most "
        "this many MB (later epochs then skip Ray Data); 0 streams every epoch",
    )
    keep_checkpoints: int = Field(
        default=2,
        gt=0,
        description="checkpoints kept in storage: the best k by `metric`, plus the latest "
        "(to resume from) when it is not among them",
    )
    progress_every_s: float = Field(
        default=15,
        ge=0,
        description="within an epoch longer than this, rank 0 prints batches done / total and "
        "the rate every this many seconds; 0: only the line per epoch",
    )
    metric: Metric = "val_accuracy"
    init_from: str | None = Field(
        default=None,
        description="start from a registered version's weights (NAME@ALIAS or NAME:VERSION); "
        "the classification head is re-initialised when the class count differs",
    )
    freeze: list[str] = Field(
        default=[], description="parameter-name patterns not trained, e.g. 'net.0.*' (fnmatch)"
    )
    pretrained_lr_scale: float = Field(
        default=1.0, ge=0.0, description="lr multiplier for the weights loaded by init_from"
    )
    max_failures: int = Field(default=2, ge=-1, description="worker-group restarts; -1: forever")
    seed: int = 0

    @field_validator("init_from")
    @classmethod
    def _init_from(cls, value: str | None) -> str | None:
        try:
            return value if value is None else str(ModelRef.parse(value))
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @property
    def mode(self) -> Literal["min", "max"]:
        return mode_of(self.metric)


class JobConfig(Strict):
    """One training job. `name` is the run name: re-running the same name resumes it."""

    name: str = "raylane"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (a stable run name)")
        return value


def presets() -> list[str]:
    return _presets(PRESET_DIR)


def load_job_config(preset_or_path: str, overrides: list[str] | None = None) -> JobConfig:
    """Defaults <- preset/YAML file <- `key=value` overrides, validated."""
    data = apply_overrides(read_yaml(preset_or_path, PRESET_DIR), list(overrides or []))
    data.setdefault("name", Path(preset_or_path).stem)
    return validate(JobConfig, data, source=f"config {preset_or_path!r}")

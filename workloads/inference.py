"""Batched prediction of one or more models on the same rows: in this process for small data,
a Ray Data `map_batches` over the rows for large data.

    rows = Rows.validation_of(meta)                     # or Rows.everything("s3://b/new.parquet")
    probabilities, labels = predict([model_a, model_b], rows, inference="auto")
    # probabilities: one (N, K) float32 array per model, row i of each is the same row

Every model predicts every row in the same pass, so the predictions line up row by row (what a
paired comparison needs) without relying on Ray Data's output order. `auto` runs in-process up
to RAY_INFERENCE_ROWS rows (read whole, no start-up cost), and above that reads, splits and
predicts in Ray Data tasks and actors spread over the cluster, so no single process holds the
data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cluster.errors import DataError
from cluster.storage import Storage
from workloads.checkpoint import (
    InputSpec,
    encode_labels,
    input_spec_of,
    model_from_state,
    prepare_features,
    stack_features,
    unwrap,
)
from workloads.data import count_rows, parquet_files, read_split, select_rows
from workloads.step import predict_logits
from workloads.trust import CodePolicy

Inference = Literal["auto", "local", "ray"]
RAY_INFERENCE_ROWS = 200_000  # above this many rows `auto` predicts with Ray Data
BATCH_ROWS = 4096
ACTOR_CPUS = 0.5  # inference actors run beside other fractional work on small machines


@dataclass(frozen=True)
class Model:
    """A loaded model and its input spec; `name` is how reports call it (digits:3)."""

    name: str
    module: torch.nn.Module
    meta: dict
    policy: CodePolicy  # what allowed its class to load; Ray actors rebuild it under the same
    footprint: dict | None = None  # {"parameters", "bytes"} of its stored files, when known

    def __post_init__(self):
        input_spec_of(self.meta)  # a checkpoint without a usable input spec fails here, named

    @property
    def spec(self) -> InputSpec:
        return input_spec_of(self.meta)


@dataclass(frozen=True)
class Rows:
    """Which rows to predict: the validation split of a dataset, or every row of a Parquet."""

    uri: str
    validation_fraction: float | None  # None: every row
    label: str  # where its report is stored: "validation", or "data-<hash of the URI>"
    description: str

    @classmethod
    def validation_of(cls, model: Model) -> Rows:
        uri = model.meta.get("data_uri")
        fraction = ((model.meta.get("config") or {}).get("data") or {}).get("validation_fraction")
        if not uri or not fraction:
            raise DataError(
                f"{model.name} does not record its training data (data_uri and "
                "config.data.validation_fraction in its meta.json); evaluate it on a Parquet "
                "with the same columns: --data URI"
            )
        return cls(uri, fraction, "validation", f"the validation split ({fraction:.0%}) of {uri}")

    @classmethod
    def everything(cls, uri: str) -> Rows:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
        return cls(uri, None, f"data-{digest}", f"every row of {uri}")

    @property
    def split(self) -> str:
        return "all" if self.validation_fraction is None else "validation"


def predict(
    models: list[Model], rows: Rows, *, inference: Inference = "auto", address: str | None = None
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """(probabilities per model, true class indices, "local" | "ray") on `rows`."""
    spec = check_inputs(models)
    total = check_rows(rows, spec)
    if inference == "ray" or (inference == "auto" and total > RAY_INFERENCE_ROWS):
        return *predict_with_ray(models, rows, address=address), "ray"
    features, labels = read_split(
        rows.uri, spec, validation_fraction=rows.validation_fraction or 0.0, split=rows.split
    )
    if not len(labels):
        raise DataError(f"no rows to evaluate in {rows.description}")
    return [probabilities(m.module, m.spec, features) for m in models], labels, "local"


def check_inputs(models: list[Model]) -> InputSpec:
    """The spec the rows are read with; every model must take the same columns and classes."""
    first = models[0].spec
    for model in models[1:]:
        spec = model.spec
        same = (spec.feature_columns, spec.label_column, spec.class_names, spec.shape)
        if same != (first.feature_columns, first.label_column, first.class_names, first.shape):
            raise DataError(
                f"{models[0].name} and {model.name} do not take the same inputs (columns "
                f"{list(first.feature_columns)} -> {list(spec.feature_columns)}, classes "
                f"{len(first.class_names)} -> {len(spec.class_names)}): compare versions of "
                "models trained on the same kind of data"
            )
    return first


def check_rows(rows: Rows, spec: InputSpec) -> int:
    """The number of rows in the Parquet (before any split), or DataError naming the problem."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        fs, path = Storage.from_uri(rows.uri).arrow_filesystem()
        schema = pads.dataset(parquet_files(fs, path), filesystem=fs, format="parquet").schema
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as error:
        raise DataError(f"cannot read Parquet at {rows.uri}: {error}") from None
    missing = [c for c in (*spec.feature_columns, spec.label_column) if c not in schema.names]
    if missing:
        raise DataError(
            f"{rows.uri} lacks the column(s) {', '.join(missing)} the model reads; it has "
            f"{', '.join(schema.names)}"
        )
    return count_rows(rows.uri)


def logits(module: torch.nn.Module, spec: InputSpec, features: np.ndarray) -> np.ndarray:
    """The model's logits over raw feature rows, BATCH_ROWS at a time."""
    module.eval()
    parts = []
    for start in range(0, len(features), BATCH_ROWS):
        batch = torch.as_tensor(prepare_features(features[start : start + BATCH_ROWS], spec))
        parts.append(predict_logits(module, batch).numpy())
    return np.concatenate(parts)


def probabilities(module: torch.nn.Module, spec: InputSpec, features: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits(module, spec, features)), dim=1).numpy()


class BatchPredictor:
    """A Ray Data actor: every model's probabilities for each batch of raw rows."""

    def __init__(self, packed: list):
        import ray

        torch.set_num_threads(1)  # a fraction of a core each: more threads only contend
        self.models = []
        for meta, weights, policy in ray.get(packed[0]):
            module = model_from_state(meta, weights, policy=policy)
            self.models.append((module, input_spec_of(meta)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.models[0][1]
        features = stack_features(batch, spec.feature_columns)
        out = {"label": encode_labels(batch[spec.label_column], spec)}
        for index, (module, model_spec) in enumerate(self.models):
            out[f"p{index}"] = probabilities(module, model_spec, features)
        return out


def predict_with_ray(models: list[Model], rows: Rows, *, address: str | None):
    """Read (and split) with Ray Data and predict in an autoscaling pool of actors."""
    import ray

    from cluster.runtime import cluster_resources, connect

    connect(address)
    spec = models[0].spec
    # The weights go to the object store once; each actor fetches them from there.
    packed = ray.put([(m.meta, unwrap(m.module).state_dict(), m.policy) for m in models])
    most = max(1, int(cluster_resources().get("CPU", 1) / ACTOR_CPUS) - 1)
    predicted = select_rows(
        rows.uri, spec, validation_fraction=rows.validation_fraction
    ).map_batches(
        BatchPredictor, fn_constructor_kwargs={"packed": [packed]}, batch_size=BATCH_ROWS,
        batch_format="numpy", num_cpus=ACTOR_CPUS, concurrency=(1, most),
    )  # fmt: skip
    batches = list(predicted.iter_batches(batch_format="numpy", batch_size=None))
    if not batches:
        raise DataError(f"no rows to evaluate in {rows.description}")
    labels = np.concatenate([b["label"] for b in batches])
    return [np.concatenate([b[f"p{i}"] for b in batches]) for i in range(len(models))], labels

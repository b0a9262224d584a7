"""Load a registered model version and predict a batch: the one place where prediction happens.

    raylane predict --model digits@production --input samples.json
    echo '{"instances": [[0, 0, 5, 13, ...]]}' | raylane predict --model digits:3 --input -
    python -m serve.predictor --model digits@production --input samples.json --storage s3://b/p

    predictor = Predictor.from_registry(open_registry(storage), "digits@production")
    rows = predictor.schema.parse(instances, max_instances=256)    # validated raw rows
    prediction = predictor.predict(rows)                           # labels + probabilities

Serve replicas, `raylane predict` and the benchmarks all call this class, so one model gives
the same answer everywhere; features go through `workloads.checkpoint.prepare_features`, the
very function training used, so serving preprocessing cannot drift from training. No Ray here.
The input file holds `{"instances": [...]}` or a bare list of instances (see serve/schemas.py
for what an instance may look like), or is a CSV (with a header) or Parquet file of rows whose
columns are the model's feature names (a label column, if present, is ignored); the output is
the same JSON the HTTP API answers.

    raylane predict --model wine@production --input rows.csv      # or rows.parquet
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cluster.config import add_common_args
from cluster.errors import DataError, RaylaneError, run_cli
from cluster.registry import ModelRef, Registry
from cluster.storage import Storage
from serve.schemas import InputSchema, RequestError, extract_instances, parse_json_body
from workloads.checkpoint import load_model, open_registry, prepare_features
from workloads.trust import CodePolicy, add_allow_flag

CLI_MAX_INSTANCES = 1_000_000  # the CLI reads a local file: only memory limits it


@dataclass(frozen=True)
class Prediction:
    labels: list[str]  # the most likely class name per instance
    probabilities: np.ndarray  # (n, num_classes) float32, rows sum to 1

    def __getitem__(self, rows: slice) -> Prediction:
        return Prediction(self.labels[rows], self.probabilities[rows])


class Predictor:
    """A loaded model version: its network (eval mode), input schema and identity."""

    def __init__(
        self, model: torch.nn.Module, meta: dict, *, name: str, version: int, device: str = "cpu"
    ):
        self.model = model
        self.meta = meta
        self.name = name
        self.version = int(version)
        self.device = device
        self.schema = InputSchema.from_meta(meta)
        self._check_outputs()

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, name: str, version: int, policy: CodePolicy,
        device: str = "cpu",
    ) -> Predictor:  # fmt: skip
        """Load a checkpoint directory. `policy` says which custom model code may be imported
        (workloads/trust.py); a corrupt or refused model is one error naming the version."""
        try:
            model, meta = load_model(directory, policy=policy, device=device)
            return cls(model, meta, name=name, version=version, device=device)
        except RaylaneError as error:
            raise type(error)(f"cannot load model {name}:{version}: {error}") from None

    @classmethod
    def from_registry(
        cls, registry: Registry, ref: str | ModelRef, *, device: str = "cpu",
        allow_modules: Sequence[str] = (),
    ) -> Predictor:  # fmt: skip
        """Resolve `name@alias` / `name:version` / `name` and load that version."""
        name, version = registry.resolve(ref)
        return cls.load_version(registry, name, version, device=device, allow_modules=allow_modules)

    @classmethod
    def load_version(
        cls, registry: Registry, name: str, version: int, *, device: str = "cpu",
        allow_modules: Sequence[str] = (),
    ) -> Predictor:  # fmt: skip
        """Download and load one version. Custom model classes load only from modules the
        operator allowed ($RAYLANE_CUSTOM_MODEL_MODULES or `allow_modules`), never from the
        registry's own storage."""
        policy = CodePolicy.for_loading(
            storage_root=registry.storage.local_root, extra=allow_modules
        )
        # The weights end up in memory; the downloaded files are not needed after loading.
        with tempfile.TemporaryDirectory(prefix="raylane-model-") as tmp:
            directory = registry.download(name, version, Path(tmp) / "checkpoint")
            return cls.from_checkpoint(
                directory, name=name, version=version, policy=policy, device=device
            )

    def predict(self, rows: np.ndarray) -> Prediction:
        """Raw validated rows (n, prod(shape)) -> labels and probabilities."""
        probabilities = self._probabilities(rows)
        names = self.schema.class_names
        return Prediction([names[i] for i in probabilities.argmax(axis=1)], probabilities)

    def _probabilities(self, rows: np.ndarray) -> np.ndarray:
        features = prepare_features(rows, self.schema.spec)
        with torch.inference_mode():
            logits = self.model(torch.as_tensor(features, device=self.device))
            return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def predict_instances(self, instances: list, *, max_instances: int) -> dict:
        """JSON instances -> the HTTP API's response body (RequestError for bad instances)."""
        rows = self.schema.parse(instances, max_instances=max_instances)
        return self.response(self.predict(rows))

    def response(self, prediction: Prediction) -> dict:
        """The HTTP API's body; a 422 when an instance drove the model to NaN or infinity
        (finite float32 inputs far outside the training data do that to a CNN's GroupNorm), as
        JSON has no such numbers."""
        finite = np.isfinite(prediction.probabilities).all(axis=1)
        if not finite.all():
            raise RequestError(
                422,
                f"instances[{int(np.argmin(finite))}] drives the model to non-finite outputs "
                "(NaN or infinity): its values are far outside the range it was trained on; "
                "expected values like the training data's",
            )
        return {
            "predictions": prediction.labels,
            "probabilities": prediction.probabilities.tolist(),
            "model": self.name,
            "version": self.version,
        }

    def describe(self) -> dict:
        """What GET /v1/models/NAME shows: identity, input schema, training metrics."""
        return {
            "name": self.name,
            "version": self.version,
            "input": self.schema.describe(),
            "metrics": self.meta.get("metrics", {}),
            "run_name": self.meta.get("run_name"),
            "family": self.meta.get("model", {}).get("family"),
        }

    def _check_outputs(self) -> None:
        """One forward pass on zeros: the model must give one logit per class name. This also
        warms the model up, so the first real request is not the slow one."""
        dtype = np.dtype(self.schema.dtype)
        rows = np.zeros((1, self.schema.size), dtype=dtype)
        if self.schema.tokens:
            rows[:, 0] = 1  # a sequence of only padding is legal but an odd warm-up
        classes = len(self.schema.class_names)
        try:
            probabilities = self._probabilities(rows)
        except Exception as error:  # any model code: report which version failed
            raise DataError(
                f"model {self.name}:{self.version} fails on an input of its own schema "
                f"{list(self.schema.shape)}: {type(error).__name__}: {error}"
            ) from error
        if probabilities.shape != (1, classes):
            raise DataError(
                f"model {self.name}:{self.version} returns {probabilities.shape[1]} outputs "
                f"but its checkpoint names {classes} classes"
            )


# ---------------------------------------------------------------------- raylane predict


ROW_FILES = (".csv", ".parquet", ".pq")


def read_instances(source: str):
    """Instances from a JSON file or '-' (stdin): {"instances": [...]} or a bare list; or, for
    a CSV/Parquet file, a pyarrow Table of rows (turned into instances by `table_instances`)."""
    if source.lower().endswith(ROW_FILES):
        return read_rows(source)
    if source == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            body = Path(source).read_bytes()
        except OSError as error:
            raise DataError(f"cannot read --input {source}: {error.strerror}") from None
    return extract_instances(parse_json_body(body), allow_bare_list=True)


def read_rows(source: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if source.lower().endswith(".csv"):
            return pacsv.read_csv(source)
        return pq.read_table(source)
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"cannot read --input {source}: {error}") from None


def table_instances(table, schema: InputSchema) -> list:
    """Rows of a CSV/Parquet table -> instances: records for named features, else the values of
    the single feature column. The label column is dropped, so a labelled file works as is."""
    spec = schema.spec
    if spec.label_column in table.column_names and spec.label_column not in spec.feature_columns:
        table = table.drop_columns([spec.label_column])
    if spec.named_features:
        return table.to_pylist()
    column = spec.feature_columns[0]
    if column not in table.column_names:
        raise DataError(
            f"the --input file has no column {column!r} (it has: "
            f"{', '.join(table.column_names)}); the model reads its features from {column!r}"
        )
    values = table.column(column).to_pylist()
    if spec.kind == "image":  # a column of PNG/JPEG bytes: sent as a client sends them, base64
        values = [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in values]
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane predict",
        description="Predict with a registered model in this process (no Ray, no server).",
    )
    parser.add_argument("--model", required=True, help="NAME@ALIAS, NAME:VERSION or NAME")
    parser.add_argument(
        "--input",
        required=True,
        help="JSON file of instances, - for stdin, or a CSV/Parquet file of rows (columns named "
        "as the model's features)",
    )
    add_common_args(parser, overrides=None, address=False)
    add_allow_flag(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)

    ref = ModelRef.parse(args.model)
    instances = read_instances(args.input)  # a bad file fails before any download
    storage = Storage.from_uri(args.storage)
    storage.check()
    predictor = Predictor.from_registry(
        open_registry(storage), ref, device=args.device, allow_modules=args.allow_custom_module
    )
    if not isinstance(instances, list):
        instances = table_instances(instances, predictor.schema)
    result = predictor.predict_instances(instances, max_instances=CLI_MAX_INSTANCES)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    run_cli(main)

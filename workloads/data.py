"""Datasets as Parquet in storage, and the Ray Data pipeline that feeds the training workers.

    raylane data prepare digits --storage s3://raylane       # or breast-cancer, synthetic-*
    raylane data prepare synthetic-tabular --rows 500000
    python -m workloads.data prepare synthetic-text

Embedded datasets land in `<storage>/datasets/<name>/` as Parquet parts plus `dataset.json`
(feature shape and dtype, class names, vocabulary, fingerprint), written last so that a
half-written dataset is never used. A user dataset is any Parquet file or directory
(`data.dataset=parquet data.path=s3://... data.feature_columns=[...] data.label_column=y`).

Training never loads the data on the driver: Ray Data reads the Parquet, splits train and
validation by a hash of each row's features (deterministic, no shuffle of the whole set), and
each worker iterates its own shard with `iter_torch_batches`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from cluster.errors import DataError, run_cli
from cluster.storage import Storage
from workloads.config import EMBEDDED_DATASETS, DataConfig

MANIFEST = "dataset.json"
ROWS_PER_PART = 100_000
# Ray Data tasks ask for a fraction of a CPU so they can run beside fractional training
# workers and concurrent trials on a small machine instead of waiting for a whole core.
DATA_TASK_CPUS = 0.25
TEXT_VOCAB, TEXT_LEN, TEXT_CLASSES = 64, 32, 4


@dataclass
class DatasetInfo:
    """What training and serving need to know about the examples."""

    kind: str  # "image" | "tabular" | "tokens"
    feature_shape: list[int]
    feature_dtype: str  # "float32" | "int64"
    class_names: list[str]
    feature_columns: list[str]
    label_column: str
    uri: str
    fingerprint: str
    rows: int | None = None
    vocab_size: int | None = None
    normalization: dict | None = field(default=None)
    # "index": labels are already 0..K-1; "names": str(label) is looked up in class_names.
    label_encoding: str = "index"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_schema(self) -> dict:
        """The `input` section of a checkpoint's meta.json."""
        return {
            "kind": self.kind,
            "shape": self.feature_shape,
            "dtype": self.feature_dtype,
            "class_names": self.class_names,
            "vocab_size": self.vocab_size,
            "normalization": self.normalization,
            "feature_columns": self.feature_columns,
            "label_column": self.label_column,
            "label_encoding": self.label_encoding,
        }


# ---------------------------------------------------------------------- embedded datasets


def dataset_key(name: str, rows: int | None = None) -> str:
    """Storage key of an embedded dataset; synthetic sets carry their size in the name."""
    return f"datasets/{name}-{rows}" if name.startswith("synthetic") else f"datasets/{name}"


def generate(name: str, *, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features, labels, facts) of an embedded dataset, generated in memory."""
    if name == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        features = raw.images.astype(np.float32)[:, None, :, :]  # N, 1, 8, 8
        return features, raw.target, {"kind": "image", "class_names": [str(c) for c in range(10)]}
    if name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        raw = load_breast_cancer()
        names = [str(n) for n in raw.target_names]
        return raw.data.astype(np.float32), raw.target, {"kind": "tabular", "class_names": names}
    if name == "synthetic-tabular":
        from sklearn.datasets import make_classification

        features, labels = make_classification(
            n_samples=rows,
            n_features=32,
            n_informative=16,
            n_redundant=4,
            n_classes=4,
            class_sep=1.5,
            random_state=seed,
        )
        names = [f"class_{c}" for c in range(4)]
        return features.astype(np.float32), labels, {"kind": "tabular", "class_names": names}
    if name == "synthetic-text":
        features, labels = _synthetic_text(rows, seed)
        names = [f"topic_{c}" for c in range(TEXT_CLASSES)]
        return features, labels, {"kind": "tokens", "class_names": names, "vocab_size": TEXT_VOCAB}
    raise DataError(f"unknown dataset {name!r}; embedded: {', '.join(EMBEDDED_DATASETS)}")


def _synthetic_text(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences whose class is the keyword that appears most often.

    Tokens 1..4 are the class keywords, 5.. are filler, 0 is padding. Each sequence holds its
    class keyword 3-5 times and one other keyword 1-2 times at random positions, then is
    padded to a random length: learnable by attention or pooling, not by position alone.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEXT_CLASSES, size=rows)
    tokens = rng.integers(1 + TEXT_CLASSES, TEXT_VOCAB, size=(rows, TEXT_LEN))
    lengths = rng.integers(TEXT_LEN // 2, TEXT_LEN + 1, size=rows)
    for i in range(rows):
        positions = rng.permutation(lengths[i])
        own, other = rng.integers(3, 6), rng.integers(1, 3)
        distractor = (labels[i] + rng.integers(1, TEXT_CLASSES)) % TEXT_CLASSES
        tokens[i, positions[:own]] = 1 + labels[i]
        tokens[i, positions[own : own + other]] = 1 + distractor
        tokens[i, lengths[i] :] = 0
    return tokens.astype(np.int64), labels


def prepare(storage: Storage, name: str, *, rows: int = 20_000, seed: int = 0) -> DatasetInfo:
    """Write an embedded dataset to storage as Parquet (idempotent) and return its info."""
    key = dataset_key(name, rows)
    if storage.exists(f"{key}/{MANIFEST}"):
        return DatasetInfo(**storage.read_json(f"{key}/{MANIFEST}"))
    features, labels, facts = generate(name, rows=rows, seed=seed)
    flat = features.reshape(len(features), -1)
    digest = hashlib.sha256(f"{name}:{rows}:{seed}".encode())
    import pyarrow.parquet as pq

    for part, start in enumerate(range(0, len(flat), ROWS_PER_PART)):
        chunk = flat[start : start + ROWS_PER_PART]
        table = pa.table(
            {
                "features": pa.FixedSizeListArray.from_arrays(
                    pa.array(chunk.ravel()), flat.shape[1]
                ),
                "label": pa.array(labels[start : start + ROWS_PER_PART].astype(np.int64)),
            }
        )
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        storage.write_bytes(f"{key}/part-{part:05d}.parquet", buffer.getvalue().to_pybytes())
        digest.update(chunk.tobytes())
    info = DatasetInfo(
        kind=facts["kind"],
        feature_shape=list(features.shape[1:]),
        feature_dtype=str(features.dtype),
        class_names=facts["class_names"],
        feature_columns=["features"],
        label_column="label",
        uri=storage.uri_for(key),
        fingerprint=digest.hexdigest()[:16],
        rows=len(flat),
        vocab_size=facts.get("vocab_size"),
    )
    storage.write_json(f"{key}/{MANIFEST}", asdict(info))  # last: the dataset is now complete
    return info


# ---------------------------------------------------------------------- reading for training


def resolve(config: DataConfig, storage: Storage) -> DatasetInfo:
    """Dataset facts for a config: embedded sets are prepared on first use."""
    if config.dataset != "parquet":
        return prepare(storage, config.dataset, rows=config.rows, seed=config.seed)
    return inspect_parquet(config)


def inspect_parquet(config: DataConfig) -> DatasetInfo:
    """Infer shape, dtype and classes of a user Parquet dataset from its schema and labels."""
    import pyarrow.dataset as pads

    source = Storage.from_uri(config.path)
    fs, path = source.arrow_filesystem()
    try:
        dataset = pads.dataset(parquet_files(fs, path), filesystem=fs, format="parquet")
        schema = dataset.schema
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as error:
        raise DataError(f"cannot read Parquet at {config.path}: {error}") from None
    wanted = [*config.feature_columns, config.label_column]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise DataError(
            f"column(s) {', '.join(missing)} not in {config.path}; it has: "
            f"{', '.join(schema.names)} (set data.feature_columns / data.label_column)"
        )
    shape = _feature_shape(config, schema, dataset)
    labels = dataset.to_table(columns=[config.label_column]).column(0)
    values = [v for v in pa.compute.unique(labels).to_pylist() if v is not None]
    if len(values) < 2:
        raise DataError(f"label column {config.label_column!r} has {len(values)} class(es)")
    if all(isinstance(v, int) for v in values):
        values = sorted(values)
        encoding = "index" if values == list(range(len(values))) else "names"
    else:
        values, encoding = sorted(str(v) for v in values), "names"
    classes = [str(v) for v in values]
    digest = hashlib.sha256()
    for fragment in dataset.get_fragments():
        digest.update(f"{fragment.path}:{fs.get_file_info(fragment.path).size}".encode())
    return DatasetInfo(
        kind="tabular",
        feature_shape=shape,
        feature_dtype="float32",
        class_names=classes,
        feature_columns=list(config.feature_columns),
        label_column=config.label_column,
        uri=source.uri,
        fingerprint=digest.hexdigest()[:16],
        rows=dataset.count_rows(),
        label_encoding=encoding,
    )


def parquet_files(fs, path: str) -> list[str]:
    """The Parquet files at `path` (a file, or a directory searched recursively)."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    selector = pafs.FileSelector(path, recursive=True)
    files = sorted(
        f.path
        for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
    )
    if not files:
        raise FileNotFoundError(f"no .parquet files under {path}")
    return files


def _feature_shape(config: DataConfig, schema: pa.Schema, dataset) -> list[int]:
    types = [schema.field(c).type for c in config.feature_columns]
    if len(types) == 1 and (pa.types.is_list(types[0]) or pa.types.is_fixed_size_list(types[0])):
        first = dataset.head(1, columns=config.feature_columns).column(0)[0].as_py()
        return [len(first)]
    bad = [c for c, t in zip(config.feature_columns, types, strict=True) if not _numeric(t)]
    if bad:
        raise DataError(f"feature column(s) {', '.join(bad)} are not numeric; use numbers")
    return [len(types)]


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)


def data_uri(config: DataConfig, info: DatasetInfo) -> str:
    return config.path if config.dataset == "parquet" else info.uri


def read_split(uri: str, input_schema: dict, *, validation_fraction: float, split: str):
    """One split as (features, labels) numpy arrays, read in this process without Ray.

    The same row hash as `load_splits` picks the rows, so a checkpoint can be re-evaluated
    on exactly its validation set anywhere (tests, `python -m workloads.evaluate`).
    """
    import pyarrow.dataset as pads

    fs, path = Storage.from_uri(uri).arrow_filesystem()
    columns = [*input_schema["feature_columns"], input_schema["label_column"]]
    table = pads.dataset(parquet_files(fs, path), filesystem=fs, format="parquet").to_table(
        columns=columns
    )
    batch = {name: _column_numpy(table.column(name)) for name in columns}
    features = stack_features(batch, input_schema["feature_columns"])
    in_validation = _row_hash(features) < int(validation_fraction * 2**32)
    rows = in_validation if split == "validation" else ~in_validation
    labels = encode_labels(batch[input_schema["label_column"]][rows], input_schema)
    return features[rows], labels


def encode_labels(labels: np.ndarray, input_schema: dict) -> np.ndarray:
    """Label values -> class indices, as the schema's label_encoding says."""
    if input_schema.get("label_encoding", "index") == "index":
        return labels.astype(np.int64)
    index = {name: i for i, name in enumerate(input_schema["class_names"])}
    return np.array([index[str(v)] for v in labels], dtype=np.int64)


def _column_numpy(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    if pa.types.is_list(column.type):
        return np.stack([np.asarray(v) for v in column.to_pylist()])
    return column.to_numpy(zero_copy_only=False)


def load_splits(config: DataConfig, info: DatasetInfo):
    """(train, validation) Ray Datasets, split by a hash of each row's features."""
    import ray.data

    # Ray 2.60's default Parquet reader lists files in a task that asks for a whole CPU. Beside
    # fractional training workers and concurrent trials that CPU may never be free (seen here:
    # a sweep hung with 0.98 CPUs idle), so read with the reader whose tasks take our share.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    source = Storage.from_uri(data_uri(config, info))
    fs, path = source.arrow_filesystem()
    columns = [*info.feature_columns, info.label_column]
    dataset = ray.data.read_parquet(
        parquet_files(fs, path), filesystem=fs, columns=columns, num_cpus=DATA_TASK_CPUS
    )
    threshold = int(config.validation_fraction * 2**32)

    def split_column(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["_bucket"] = _row_hash(stack_features(batch, info.feature_columns))
        return batch

    tagged = dataset.map_batches(split_column, batch_format="numpy", num_cpus=DATA_TASK_CPUS)
    validation = tagged.filter(expr=f"_bucket < {threshold}", num_cpus=DATA_TASK_CPUS)
    train = tagged.filter(expr=f"_bucket >= {threshold}", num_cpus=DATA_TASK_CPUS)
    return train.materialize(), validation.materialize()


def _row_hash(features: np.ndarray) -> np.ndarray:
    """A deterministic 32-bit hash per row of a 2-D array (FNV-1a over its bytes)."""
    raw = np.ascontiguousarray(features.reshape(len(features), -1)).view(np.uint8)
    raw = raw.reshape(len(features), -1).astype(np.uint64)
    hashes = np.full(len(features), 2166136261, dtype=np.uint64)
    for column in raw.T:
        hashes = ((hashes ^ column) * 16777619) & 0xFFFFFFFF
    return hashes.astype(np.int64)


def stack_features(batch: dict[str, np.ndarray], columns: list[str]) -> np.ndarray:
    if len(columns) == 1:
        values = batch[columns[0]]
        return np.stack(values) if values.dtype == object else values.reshape(len(values), -1)
    return np.stack([batch[c] for c in columns], axis=1)


def compute_normalization(train, info: DatasetInfo) -> dict | None:
    """Mean/std of float features over the training split (one scalar pair for images)."""
    if info.feature_dtype != "float32":
        return None

    def moments(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = stack_features(batch, info.feature_columns).astype(np.float64)
        return {"n": np.array([len(x)]), "s": x.sum(0)[None], "q": (x * x).sum(0)[None]}

    parts = train.map_batches(moments, batch_format="numpy", num_cpus=DATA_TASK_CPUS).take_all()
    n = sum(p["n"] for p in parts)
    total, squares = sum(p["s"] for p in parts), sum(p["q"] for p in parts)
    if info.kind == "image":  # per-pixel stats would divide constant border pixels by ~0
        n, total, squares = n * total.size, total.sum(keepdims=True), squares.sum(keepdims=True)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def prepare_features(features: np.ndarray, input_schema: dict) -> np.ndarray:
    """Flat rows -> model input: cast, normalize, reshape to the schema's shape."""
    dtype = np.dtype(input_schema["dtype"])
    x = features.reshape(len(features), -1).astype(dtype, copy=False)
    norm = input_schema.get("normalization")
    if norm:
        mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
        x = (x - mean) / std
    return x.reshape(len(x), *input_schema["shape"])


# ---------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane data", description="Write an embedded dataset to storage as Parquet."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="generate a dataset and write it to storage")
    prep.add_argument("name", choices=EMBEDDED_DATASETS)
    prep.add_argument("--rows", type=int, default=20_000, help="rows for synthetic-* datasets")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--storage", help="s3://bucket/prefix or a directory ($RAYLANE_STORAGE)")
    args = parser.parse_args(argv)

    storage = Storage.from_uri(args.storage)
    storage.check()
    info = prepare(storage, args.name, rows=args.rows, seed=args.seed)
    print(
        json.dumps(
            {
                "uri": info.uri,
                "rows": info.rows,
                "shape": info.feature_shape,
                "classes": info.num_classes,
                "fingerprint": info.fingerprint,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    run_cli(main)

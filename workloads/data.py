"""Datasets as Parquet in storage, and the Ray Data pipeline that feeds the training workers.

    info = prepare(storage, "digits")                 # `raylane data prepare digits`
    info = resolve(job.data, storage)                 # embedded (prepared on first use) or user
    train, validation = load_splits(job.data, info)   # Ray Datasets

Embedded datasets land in `<storage>/datasets/<name>/` as Parquet parts plus `dataset.json`
(feature shape and dtype, class names, vocabulary, fingerprint), written last so that a
half-written dataset is never used. A user dataset is any Parquet file or directory
(`data.dataset=parquet data.path=s3://... data.feature_columns=[...] data.label_column=y`).
One string column is text: a subword tokenizer is fitted on its training split (`fit_tokenizer`)
and each text becomes `data.text.max_length` token ids. One column of encoded PNG/JPEG bytes,
or of fixed-shape arrays ([C][H][W] or [H][W] nested lists), is images of one size [C, H, W].

Training never loads the data on the driver: Ray Data reads the Parquet, splits train and
validation by a hash of each row's features (deterministic, no shuffle of the whole set), and
each worker iterates its own shard with `iter_torch_batches`. Before any worker starts, a bad
dataset is refused in one line (workloads/datacheck.py): feature types and labels here, from
the schema and the label column; NaN or infinite features in the pass that measures the
normalization (`check_and_normalize`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from cluster.errors import DataError
from cluster.storage import Storage
from workloads import rawinputs
from workloads.checkpoint import InputSpec, encode_labels, stack_features
from workloads.config import DataConfig, TextConfig
from workloads.datacheck import (
    DATA_TASK_CPUS,
    check_feature_types,
    check_labels,
    check_values,
    is_list,
    scan_features,
)
from workloads.datasets import DATASETS

MANIFEST = "dataset.json"
ROWS_PER_PART = 100_000
IMAGE_SAMPLE = 1000  # images whose size is checked up front; a later odd one fails its batch
TOKENIZER_ROWS = 200_000  # training texts the tokenizer is fitted on, at most


@dataclass
class DatasetInfo:
    """What training and serving need to know about the examples."""

    kind: str  # "image" | "tabular" | "tokens" | "text"
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
    feature_types: list[str] | None = None  # Parquet types of named scalar feature columns
    text: dict | None = None  # kind "text": max_length, truncation, tokenizer (JSON, once fit)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_spec(self) -> InputSpec:
        """The `input` section of a checkpoint's meta."""
        return InputSpec(
            kind=self.kind,
            shape=tuple(self.feature_shape),
            dtype=self.feature_dtype,
            class_names=tuple(self.class_names),
            feature_columns=tuple(self.feature_columns),
            label_column=self.label_column,
            label_encoding=self.label_encoding,
            vocab_size=self.vocab_size,
            normalization=self.normalization,
            feature_types=tuple(self.feature_types) if self.feature_types else None,
            text=self.text,
        )


# ---------------------------------------------------------------------- embedded datasets


def prepare(storage: Storage, name: str, *, rows: int = 20_000, seed: int = 0) -> DatasetInfo:
    """Write an embedded dataset to storage as Parquet (idempotent) and return its info."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; embedded: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    key = dataset.key(rows)
    if storage.exists(f"{key}/{MANIFEST}"):
        return DatasetInfo(**storage.read_json(f"{key}/{MANIFEST}"))
    features, labels = dataset.generate(rows=rows, seed=seed)
    flat = features if features.dtype == object else features.reshape(len(features), -1)
    digest = hashlib.sha256(f"{name}:{rows}:{seed}".encode())
    import pyarrow.parquet as pq

    for part, start in enumerate(range(0, len(flat), ROWS_PER_PART)):
        chunk = flat[start : start + ROWS_PER_PART]
        column, raw = _feature_column(chunk)
        table = pa.table(
            {
                "features": column,
                "label": pa.array(labels[start : start + ROWS_PER_PART].astype(np.int64)),
            }
        )
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        storage.write_bytes(f"{key}/part-{part:05d}.parquet", buffer.getvalue().to_pybytes())
        digest.update(raw)
    info = DatasetInfo(
        kind=dataset.kind,
        feature_shape=list(features.shape[1:]),
        feature_dtype=str(features.dtype),
        class_names=list(dataset.class_names),
        feature_columns=["features"],
        label_column="label",
        uri=storage.uri_for(key),
        fingerprint=digest.hexdigest()[:16],
        rows=len(flat),
        vocab_size=dataset.vocab_size,
    )
    storage.write_json(f"{key}/{MANIFEST}", asdict(info))  # last: the dataset is now complete
    return info


def _feature_column(chunk: np.ndarray) -> tuple[pa.Array, bytes]:
    """Generated features as a Parquet column (strings, or fixed-size lists of numbers), and
    their bytes for the fingerprint."""
    if chunk.dtype == object:
        texts = [str(text) for text in chunk]
        return pa.array(texts, pa.string()), "\n".join(texts).encode()
    column = pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), chunk.shape[1])
    return column, chunk.tobytes()


# ---------------------------------------------------------------------- reading for training


def resolve(config: DataConfig, storage: Storage) -> DatasetInfo:
    """Dataset facts for a config: embedded sets are prepared on first use."""
    if config.dataset != "parquet":
        info = prepare(storage, config.dataset, rows=config.rows, seed=config.seed)
    else:
        info = inspect_parquet(config)
    return with_text_settings(info, config.text)


def with_text_settings(info: DatasetInfo, text: TextConfig) -> DatasetInfo:
    """A text dataset's model input: `max_length` token ids below `vocab_size`."""
    if info.kind != "text":
        return info
    info.feature_shape, info.feature_dtype = [text.max_length], "int64"
    info.vocab_size = text.vocab_size
    info.text = {"max_length": text.max_length, "truncation": text.truncation}
    return info


def fit_tokenizer(train, info: DatasetInfo) -> None:
    """Fit a text dataset's tokenizer on (up to TOKENIZER_ROWS of) its training split, in
    place: it then travels in the input spec to the workers and into every checkpoint."""
    if info.kind != "text":
        return
    column = info.feature_columns[0]

    def texts():
        subset = train.select_columns([column]).limit(TOKENIZER_ROWS)
        for batch in subset.iter_batches(batch_format="numpy", batch_size=4096):
            yield from (text for text in batch[column].tolist() if isinstance(text, str))

    # Sorted: the same texts in any block order give the same tokenizer, so a re-run that
    # resumes from a checkpoint tokenizes as the weights it loads were trained.
    tokenizer = rawinputs.fit_tokenizer(sorted(texts()), vocab_size=info.vocab_size)
    info.text = {**(info.text or {}), "tokenizer": tokenizer}


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
    raw = _raw_input(config, schema, dataset)
    kind, shape = raw if raw else ("tabular", _feature_shape(config, schema, dataset))
    labels = dataset.to_table(columns=[config.label_column]).column(0)
    check_labels(config.label_column, labels)
    values = pa.compute.unique(labels).to_pylist()
    if len(values) < 2:
        raise DataError(
            f"label column {config.label_column!r} has {len(values)} class(es); a classifier "
            "needs at least 2: check data.label_column"
        )
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
        kind=kind,
        feature_shape=shape,
        feature_dtype="float32",
        class_names=classes,
        feature_columns=list(config.feature_columns),
        label_column=config.label_column,
        uri=source.uri,
        fingerprint=digest.hexdigest()[:16],
        rows=dataset.count_rows(),
        label_encoding=encoding,
        feature_types=[str(schema.field(c).type) for c in config.feature_columns],
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


def _raw_input(config: DataConfig, schema: pa.Schema, dataset) -> tuple[str, list[int]] | None:
    """("text", []) for one string column; ("image", [C, H, W]) for one column of encoded
    images or of nested fixed-shape arrays, all of one size; None for numeric features."""
    if len(config.feature_columns) != 1:
        return None
    column = config.feature_columns[0]
    type_ = schema.field(column).type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text", []
    encoded = pa.types.is_binary(type_) or pa.types.is_large_binary(type_)
    nested = is_list(type_) and is_list(type_.value_type)
    if not (encoded or nested):
        return None
    sample = [v for v in dataset.head(IMAGE_SAMPLE, columns=[column]).column(0).to_pylist() if v]
    try:
        shapes = {rawinputs.image_shape(v) if encoded else np.shape(v) for v in sample}
    except ValueError as error:
        raise DataError(f"image column {column!r}: a value {error}") from None
    if len(shapes) != 1:
        shown = ", ".join(str(list(shape)) for shape in sorted(shapes)[:4])
        raise DataError(
            f"image column {column!r} mixes image shapes ({shown}); every image must have the "
            "same size and channels: resize them first"
        )
    shape = list(shapes.pop())
    if len(shape) not in (2, 3):
        raise DataError(f"image column {column!r} holds arrays of shape {shape}; use [C][H][W]")
    return "image", [1, *shape] if len(shape) == 2 else shape


def _feature_shape(config: DataConfig, schema: pa.Schema, dataset) -> list[int]:
    check_feature_types(config, schema)
    column = schema.field(config.feature_columns[0])
    if len(config.feature_columns) > 1 or not is_list(column.type):
        return [len(config.feature_columns)]
    if pa.types.is_fixed_size_list(column.type):
        return [column.type.list_size]
    first = dataset.head(1, columns=[column.name]).column(0)[0].as_py()
    if first is None:
        raise DataError(f"feature column {column.name!r} is empty (null) in its first row")
    return [len(first)]


def data_uri(config: DataConfig, info: DatasetInfo) -> str:
    return config.path if config.dataset == "parquet" else info.uri


def read_split(uri: str, spec: InputSpec, *, validation_fraction: float, split: str):
    """One split ("train", "validation" or "all" rows) as (features, labels) numpy arrays, read
    in this process without Ray.

    The same row hash as `load_splits` picks the rows, so a checkpoint can be re-evaluated
    on exactly its validation set anywhere (tests, `python -m workloads.evaluate`).
    """
    import pyarrow.dataset as pads

    fs, path = Storage.from_uri(uri).arrow_filesystem()
    columns = [*spec.feature_columns, spec.label_column]
    table = pads.dataset(parquet_files(fs, path), filesystem=fs, format="parquet").to_table(
        columns=columns
    )
    batch = {name: _column_numpy(table.column(name)) for name in columns}
    features = stack_features(batch, spec.feature_columns)
    if split == "all":
        return features, encode_labels(batch[spec.label_column], spec)
    in_validation = _row_hash(features) < int(validation_fraction * 2**32)
    rows = in_validation if split == "validation" else ~in_validation
    labels = encode_labels(batch[spec.label_column][rows], spec)
    return features[rows], labels


def _column_numpy(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    if pa.types.is_list(column.type):
        return np.stack([np.asarray(v) for v in column.to_pylist()])
    return column.to_numpy(zero_copy_only=False)


def load_splits(config: DataConfig, info: DatasetInfo):
    """(train, validation) Ray Datasets, split by a hash of each row's features."""
    columns = [*info.feature_columns, info.label_column]
    tagged = _tagged_rows(data_uri(config, info), columns, info.feature_columns)
    threshold = int(config.validation_fraction * 2**32)
    validation = tagged.filter(expr=f"_bucket < {threshold}", num_cpus=DATA_TASK_CPUS)
    train = tagged.filter(expr=f"_bucket >= {threshold}", num_cpus=DATA_TASK_CPUS)
    return train.materialize(), validation.materialize()


def select_rows(uri: str, spec: InputSpec, *, validation_fraction: float | None):
    """A Ray Dataset of the validation rows of `uri` (the split of `load_splits`), or of every
    row when `validation_fraction` is None: what batched inference reads."""
    columns = [*spec.feature_columns, spec.label_column]
    if validation_fraction is None:
        return _read_parquet(uri, columns)
    threshold = int(validation_fraction * 2**32)
    tagged = _tagged_rows(uri, columns, spec.feature_columns)
    return tagged.filter(expr=f"_bucket < {threshold}", num_cpus=DATA_TASK_CPUS)


def _read_parquet(uri: str, columns: list[str]):
    import ray.data

    # Reads with Ray Data's v1 Parquet datasource, whose tasks take DATA_TASK_CPUS:
    # cluster/runtime.py switches it on where Ray is connected (see the reason there).
    fs, path = Storage.from_uri(uri).arrow_filesystem()
    return ray.data.read_parquet(
        parquet_files(fs, path), filesystem=fs, columns=columns, num_cpus=DATA_TASK_CPUS
    )


def _tagged_rows(uri: str, columns: list[str], feature_columns):
    """The rows of `uri` with a `_bucket` column: the hash that assigns each row its split."""

    def split_column(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["_bucket"] = row_hashes(batch, feature_columns)
        return batch

    dataset = _read_parquet(uri, columns)
    return dataset.map_batches(split_column, batch_format="numpy", num_cpus=DATA_TASK_CPUS)


def count_rows(uri: str) -> int:
    """Rows of the Parquet at `uri`, from the files' footers (no data read)."""
    import pyarrow.dataset as pads

    fs, path = Storage.from_uri(uri).arrow_filesystem()
    return pads.dataset(parquet_files(fs, path), filesystem=fs, format="parquet").count_rows()


def row_hashes(batch: dict[str, np.ndarray], feature_columns) -> np.ndarray:
    """Each row's split hash. A list column with a null row or rows of several lengths cannot be
    stacked: its rows are hashed one by one (the same hashes), a null one as 0, so that the
    data check refuses them in one line (workloads/datacheck.py) instead of np.stack failing."""
    try:
        return _row_hash(stack_features(batch, feature_columns))
    except ValueError:
        rows = batch[feature_columns[0]]
        return np.array([0 if v is None else _row_hash(np.asarray(v)[None])[0] for v in rows])


def _row_hash(features: np.ndarray) -> np.ndarray:
    """A deterministic 32-bit hash per row of a 2-D array (FNV-1a over its bytes), or of raw
    values (CRC-32 of each text's UTF-8 or each image's bytes)."""
    if features.dtype == object:
        raw = [v.encode() if isinstance(v, str) else bytes(v or b"") for v in features]
        return np.array([zlib.crc32(value) for value in raw], dtype=np.int64)
    raw = np.ascontiguousarray(features.reshape(len(features), -1)).view(np.uint8)
    raw = raw.reshape(len(features), -1).astype(np.uint64)
    hashes = np.full(len(features), 2166136261, dtype=np.uint64)
    for column in raw.T:
        hashes = ((hashes ^ column) * 16777619) & 0xFFFFFFFF
    return hashes.astype(np.int64)


def check_and_normalize(train, validation, info: DatasetInfo, *, normalize: bool) -> dict | None:
    """Refuse NaN, infinite or missing feature values in either split (workloads/datacheck.py);
    return the training split's mean/std when asked (one scalar pair for images). Integer
    (token) features can hold neither, and are not normalized."""
    if info.feature_dtype != "float32":
        return None
    stats = scan_features(train, info)
    check_values(stats, info.feature_columns, split="training")
    check_values(scan_features(validation, info), info.feature_columns, split="validation")
    if not normalize:
        return None
    n, total, squares = stats["n"], stats["s"], stats["q"]
    if info.kind == "image":  # per-pixel stats would divide constant border pixels by ~0
        n, total, squares = n * total.size, total.sum(keepdims=True), squares.sum(keepdims=True)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}

"""The checks a dataset passes before any training worker starts: each bad case is refused in
one line that names the column and the fix, instead of training on it or crashing later.

    check_feature_types(config, schema)      # driver, from the Parquet schema
    check_labels("diagnosis", labels)        # driver, on the label column it reads anyway
    stats = scan_features(train, info)       # Ray Data, one pass over a split
    check_values(stats, info.feature_columns, split="training")
    check_values(feature_stats(batch, ["a", "b"], 2), ["a", "b"], split="training")  # no Ray

What each check stops (seen before they existed): a null label became class index
-9223372036854775808 and failed 35 s into training with an IndexError; a NaN label trained as a
class named 'nan'; a NaN or infinite feature trained silently to val_loss nan; a text column
was refused only as "not numeric". The value scan runs in Ray Data over the materialized
splits (the driver never loads the data) and is the same pass that measures normalization.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.errors import DataError
from workloads.checkpoint import InputSpec, decode_raw, stack_features
from workloads.config import DataConfig

# Ray Data tasks ask for a fraction of a CPU so they can run beside fractional training
# workers and concurrent trials on a small machine instead of waiting for a whole core.
DATA_TASK_CPUS = 0.25


def numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)


def is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)  # fmt: skip


def check_feature_types(config: DataConfig, schema: pa.Schema) -> None:
    """Features are numbers: several numeric columns, or one column of numeric lists."""
    fields = [schema.field(name) for name in config.feature_columns]
    if len(fields) == 1 and is_list(fields[0].type):
        if not numeric(fields[0].type.value_type):
            raise DataError(
                f"feature column {fields[0].name!r} holds lists of {fields[0].type.value_type}, "
                "not numbers: store each example as a list of numbers"
            )
        return
    bad = [f"{f.name!r} ({_kind(f.type)})" for f in fields if not numeric(f.type)]
    if bad:
        raise DataError(
            f"feature column(s) {', '.join(bad)} are not numbers: encode them as numbers "
            "(e.g. category codes or one-hot columns), leave them out of data.feature_columns, "
            "or make a text or image column the only feature column"
        )


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text"
    if pa.types.is_dictionary(type_):
        return "categories"
    return "a list" if is_list(type_) else str(type_)


def check_labels(name: str, labels: pa.ChunkedArray) -> None:
    """Every row has a label: no null, no NaN."""
    missing = labels.null_count
    if pa.types.is_floating(labels.type):
        missing += pc.sum(pc.is_nan(labels)).as_py() or 0
    if missing:
        raise DataError(
            f"label column {name!r} is empty (null or NaN) in {missing} of {len(labels)} rows: "
            "drop those rows or fill in their labels"
        )


def scan_features(dataset, info) -> dict[str, np.ndarray]:
    """One Ray Data pass over a split: `feature_stats` of each batch, summed."""
    width = int(np.prod(info.feature_shape))
    parts = dataset.map_batches(
        feature_stats,
        fn_kwargs={"columns": info.feature_columns, "width": width, "spec": info.input_spec()},
        batch_format="numpy", num_cpus=DATA_TASK_CPUS,
    ).take_all()  # fmt: skip
    return {key: sum(part[key] for part in parts) for key in STATS}


STATS = ("n", "s", "q", "bad", "ragged")


def feature_stats(
    batch: dict[str, np.ndarray], columns, width: int, spec: InputSpec | None = None
) -> dict[str, np.ndarray]:
    """Rows `n`, per-feature sums `s` and squares `q` of the finite values, per-feature counts
    `bad` of NaN, infinite or missing values (a null reaches numpy as NaN), and `ragged`: rows
    of a list column that are null or not `width` numbers long (np.stack would fail on them).
    Encoded images are decoded first, as training decodes them (`spec`)."""
    values = batch[columns[0]]
    ragged = np.zeros(len(values), bool)
    if spec is not None and len(values) and isinstance(values[0], bytes | str):
        x = decode_raw(stack_features(batch, columns), spec).reshape(len(values), -1)
    else:
        if len(columns) == 1 and values.dtype == object:
            ragged = np.array([v is None or np.size(v) != width for v in values], bool)
            batch = {columns[0]: np.array([np.full(width, np.nan) if r else v
                                           for v, r in zip(values, ragged, strict=True)])}  # fmt: skip
        x = stack_features(batch, columns)
    x = x.astype(np.float64)
    bad = ~np.isfinite(x) & ~ragged[:, None]
    x = np.where(bad | ragged[:, None], 0.0, x)
    return {"n": np.array([len(x)]), "s": x.sum(0)[None], "q": (x * x).sum(0)[None],
            "bad": bad.sum(0)[None], "ragged": np.array([ragged.sum()])}  # fmt: skip


def check_values(stats: dict[str, np.ndarray], columns, *, split: str) -> None:
    """Refuse NaN, infinite or missing feature values, naming the column (and the position in
    a list column), and list rows that are null or of another length."""
    if np.sum(stats["ragged"]):
        raise DataError(
            f"feature column {columns[0]!r} has {int(np.sum(stats['ragged']))} row(s) in the "
            f"{split} split that are null or not {stats['s'].size} numbers long: drop or fix "
            "those rows before training"
        )
    bad = np.flatnonzero(stats["bad"])
    if not len(bad):
        return
    if len(columns) == 1:
        where = f"feature column {columns[0]!r} (position {int(bad[0])} of its lists)"
    else:
        where = f"feature column {columns[int(bad[0])]!r}"
    count = int(stats["bad"].sum())
    raise DataError(
        f"{where} has {count} NaN, infinite or missing value(s) in the {split} split: drop "
        "those rows or fill them in (e.g. with the column's mean) before training"
    )

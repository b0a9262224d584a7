"""The pure data helpers: the embedded dataset table, preparing a dataset into storage, the
input spec and the feature preparation that training and serving share, the row-hash split.
Local storage, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.errors import DataError
from workloads.checkpoint import (
    InputSpec,
    encode_labels,
    input_spec_of,
    prepare_features,
    stack_features,
)
from workloads.config import EMBEDDED_DATASETS, DataConfig
from workloads.data import inspect_parquet, prepare, read_split
from workloads.datasets import DATASETS


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_embedded_dataset_generates_what_its_table_entry_says(name):
    dataset = DATASETS[name]
    features, labels = dataset.generate(rows=300, seed=0)
    assert len(features) == len(labels) and (len(features) == 300 or not dataset.sized)
    assert set(np.unique(labels)) == set(range(len(dataset.class_names)))
    if dataset.kind == "tokens":
        assert features.dtype == np.int64 and features.max() < dataset.vocab_size
    elif dataset.kind == "text":
        assert features.dtype == object and all(isinstance(text, str) for text in features)
    else:
        assert features.dtype == np.float32
    assert tuple(DATASETS) == EMBEDDED_DATASETS


def test_synthetic_text_labels_are_the_most_frequent_keyword():
    features, labels = DATASETS["synthetic-text"].generate(rows=200, seed=3)
    counts = np.stack([(features == 1 + c).sum(axis=1) for c in range(4)], axis=1)
    assert (counts.argmax(axis=1) == labels).all()


def test_prepare_writes_parquet_then_a_manifest_and_is_idempotent(local_storage):
    info = prepare(local_storage, "synthetic-tabular", rows=500, seed=1)
    files = local_storage.list("datasets/synthetic-tabular-500")
    assert sorted(f.rsplit("/", 1)[1] for f in files) == ["dataset.json", "part-00000.parquet"]
    assert (info.rows, info.feature_shape, info.num_classes) == (500, [32], 4)
    again = prepare(local_storage, "synthetic-tabular", rows=500, seed=1)
    assert again.fingerprint == info.fingerprint
    with pytest.raises(DataError, match="unknown dataset 'mnist'; embedded: digits"):
        prepare(local_storage, "mnist")


def test_input_spec_round_trips_and_refuses_a_broken_section():
    spec = InputSpec(kind="image", shape=(1, 8, 8), dtype="float32", class_names=("a", "b"))
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert input_spec_of({"input": spec.to_dict()}).size == 64
    with pytest.raises(DataError, match="no usable 'input' section"):
        InputSpec.from_dict({"shape": [1, 8, 8]})
    with pytest.raises(DataError, match="needs input.vocab_size"):
        InputSpec.from_dict({"kind": "tokens", "shape": [4], "dtype": "int64", "class_names": []})


def test_prepare_features_normalizes_casts_and_reshapes_like_training():
    spec = InputSpec(
        kind="image", shape=(1, 2, 2), dtype="float32", class_names=("a", "b"),
        normalization={"mean": [2.0], "std": [4.0]},
    )  # fmt: skip
    rows = np.array([[2, 6, 10, -2]], dtype=np.int64)
    prepared = prepare_features(rows, spec)
    assert prepared.dtype == np.float32 and prepared.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(prepared.ravel(), [0.0, 1.0, 2.0, -1.0])


def test_named_columns_stack_in_spec_order_and_labels_encode_by_name():
    batch = {"b": np.array([1.0, 2.0]), "a": np.array([3.0, 4.0]), "y": np.array(["no", "yes"])}
    np.testing.assert_array_equal(stack_features(batch, ["a", "b"]), [[3.0, 1.0], [4.0, 2.0]])
    spec = InputSpec(
        kind="tabular", shape=(2,), dtype="float32", class_names=("no", "yes"),
        label_encoding="names",
    )  # fmt: skip
    np.testing.assert_array_equal(encode_labels(batch["y"], spec), [0, 1])


def test_the_validation_split_is_a_stable_hash_of_each_row(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table(
        {"x1": rng.normal(size=400), "x2": rng.normal(size=400), "y": rng.integers(0, 2, 400)}
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    info = inspect_parquet(
        DataConfig(
            dataset="parquet", path=str(path), feature_columns=["x1", "x2"], label_column="y"
        )
    )
    assert info.feature_shape == [2] and info.class_names == ["0", "1"]
    spec = info.input_spec()
    val, val_labels = read_split(str(path), spec, validation_fraction=0.25, split="validation")
    train, _ = read_split(str(path), spec, validation_fraction=0.25, split="train")
    assert len(val) + len(train) == 400 and 60 < len(val) < 140
    again, again_labels = read_split(str(path), spec, validation_fraction=0.25, split="validation")
    np.testing.assert_array_equal(val, again)
    np.testing.assert_array_equal(val_labels, again_labels)
    assert not {tuple(r) for r in val} & {tuple(r) for r in train}

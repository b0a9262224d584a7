"""A user's own Parquet dataset in S3: named scalar feature columns and string labels."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_breast_cancer

from cluster.errors import DataError
from workloads.config import load_job_config
from workloads.data import inspect_parquet

pytestmark = pytest.mark.integration


@pytest.fixture
def user_parquet(s3_storage) -> str:
    raw = load_breast_cancer()
    columns = {f"f{i}": raw.data[:, i] for i in range(raw.data.shape[1])}
    columns["diagnosis"] = [str(raw.target_names[t]) for t in raw.target]
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    s3_storage.write_bytes("mydata/cancer.parquet", buffer.getvalue())
    return s3_storage.uri_for("mydata/cancer.parquet")


def overrides(path: str, features: str = "[" + ", ".join(f"f{i}" for i in range(30)) + "]"):
    return [
        "data.dataset=parquet",
        f"data.path={path}",
        f"data.feature_columns={features}",
        "data.label_column=diagnosis",
        "name=user-data",
    ]


def test_user_parquet_trains_with_named_columns_and_string_labels(
    ray_session, s3_storage, user_parquet
):
    from workloads.train import run_training

    config = load_job_config("tabular-mlp", overrides(user_parquet) + ["train.epochs=6"])
    summary = run_training(config, s3_storage, verbose=False)

    assert summary.metrics["val_accuracy"] >= 0.9
    meta = s3_storage.read_json(f"{summary.best_checkpoint_key}/meta.json")
    assert meta["input"]["class_names"] == ["benign", "malignant"]
    assert meta["input"]["shape"] == [30] and meta["data_uri"] == user_parquet


def test_missing_columns_are_named_with_what_the_file_has(s3_storage, user_parquet):
    config = load_job_config("tabular-mlp", overrides(user_parquet, "[f0, nope]"))
    with pytest.raises(DataError, match=r"column\(s\) nope not in .*it has: f0, f1"):
        inspect_parquet(config.data)


def test_a_missing_file_is_reported(s3_storage):
    config = load_job_config("tabular-mlp", overrides(s3_storage.uri_for("nothing.parquet")))
    with pytest.raises(DataError, match="cannot read Parquet at s3://"):
        inspect_parquet(config.data)

"""A user's own Parquet dataset in S3: named scalar feature columns and string labels; a column
of raw texts; a column of PNG images. Each trains, registers and serves over HTTP. Feature values
that are refused before any training worker starts are here too (the other bad-data cases, found
without Ray, are in tests/unit/test_bad_data.py).

    pytest tests/integration/test_user_data.py
"""

from __future__ import annotations

import base64
import contextlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import digits_data, png_base64
from sklearn.datasets import load_breast_cancer

from cluster.errors import DataError
from workloads.config import load_job_config
from workloads.data import inspect_parquet

pytestmark = pytest.mark.integration


def write_cancer(storage, key: str, *, f7: dict | None = None) -> str:
    """The breast-cancer data as a user's Parquet file; `f7` ({row: value}) replaces values."""
    raw = load_breast_cancer()
    columns = {f"f{i}": raw.data[:, i] for i in range(raw.data.shape[1])}
    changed = f7 or {}
    columns["f7"] = pa.array([changed.get(i, v) for i, v in enumerate(columns["f7"])])
    columns["diagnosis"] = [str(raw.target_names[t]) for t in raw.target]
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    storage.write_bytes(key, buffer.getvalue())
    return storage.uri_for(key)


@pytest.fixture
def user_parquet(s3_storage) -> str:
    return write_cancer(s3_storage, "mydata/cancer.parquet")


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


def test_named_columns_train_register_serve_and_answer_records(
    ray_session, s3_storage, user_parquet
):
    """train --register, then Serve: records in any key order answer as ordered lists do."""
    train_and_register(
        s3_storage, "tabular-mlp", "cancer", [*overrides(user_parquet), "train.epochs=2"]
    )
    with serving(s3_storage, "cancer@production") as http:
        info = http.get("/v1/models/cancer").json()
        names = [feature["name"] for feature in info["input"]["features"]]
        assert names == [f"f{i}" for i in range(30)] and info["version"] == 1
        rows = load_breast_cancer().data[:3]
        records = [dict(reversed(list(zip(names, map(float, row), strict=True)))) for row in rows]
        as_lists = http.post("/v1/models/cancer:predict", json={"instances": rows.tolist()})
        as_records = http.post("/v1/models/cancer:predict", json={"instances": records})
        assert as_lists.status_code == as_records.status_code == 200
        assert as_records.json() == as_lists.json()
        del records[1]["f7"]
        refused = http.post("/v1/models/cancer:predict", json={"instances": records})
        assert refused.status_code == 422
        assert 'instances[1] lacks "f7"' in refused.json()["error"]


def write_parquet(storage, key: str, columns: dict) -> str:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    storage.write_bytes(key, buffer.getvalue())
    return storage.uri_for(key)


def train_and_register(storage, preset: str, name: str, sets: list[str]) -> None:
    """`raylane train ... --register NAME --promote production` on one worker."""
    from workloads import train as train_cli

    argv = ["--config", preset, *[arg for s in sets for arg in ("--set", s)], "--num-workers", "1"]
    argv += ["--storage", storage.uri, "--register", name, "--promote", "production"]
    assert train_cli.main(argv) == 0


@contextlib.contextmanager
def serving(storage, model: str):
    """Serve `model` with Ray Serve on a free port; yields an HTTP client for it."""
    import httpx
    from ray import serve as ray_serve

    from cluster.s3server import free_port
    from serve.app import APP_NAME, build_app

    port = free_port()
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": model, "storage": storage.uri, "num_cpus": 0.25, "api_key_env": None}
    ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        ray_serve.shutdown()


# One NaN and one null: the whole pass before any worker (every kind of bad value: unit tests).
@pytest.mark.parametrize("bad", [float("nan"), None])
def test_nan_infinite_or_missing_features_are_refused_before_any_worker_starts(
    ray_session, s3_storage, bad
):
    from workloads.train import run_training

    path = write_cancer(s3_storage, "mydata/bad.parquet", f7={13: bad})
    config = load_job_config("tabular-mlp", overrides(path))
    expected = (
        r"feature column 'f7' has 1 NaN, infinite or missing value\(s\) in the "
        r"(training|validation) split: drop those rows or fill them in"
    )
    with pytest.raises(DataError, match=expected):
        run_training(config, s3_storage, verbose=False)
    assert s3_storage.list("runs") == []  # no worker started, nothing recorded


def test_a_text_parquet_trains_registers_and_serves_raw_strings(ray_session, s3_storage):
    """Strings in, labels out: served predictions equal the in-process ones."""
    from serve.predictor import Predictor
    from workloads.checkpoint import open_registry
    from workloads.datasets import DATASETS

    texts, labels = DATASETS["synthetic-news"].generate(rows=1500, seed=1)
    topics = [DATASETS["synthetic-news"].class_names[label] for label in labels]
    path = write_parquet(s3_storage, "mytexts/news.parquet", {"body": texts, "topic": topics})
    sets = ["data.dataset=parquet", f"data.path={path}", "data.feature_columns=[body]"]
    sets += ["data.label_column=topic", "train.epochs=2", "name=user-text"]
    train_and_register(s3_storage, "news-lstm", "news", sets)

    meta = open_registry(s3_storage).describe("news", 1)["meta"]
    assert meta["input"]["text"]["tokenizer_file"] == "tokenizer.json"
    assert meta["metrics"]["val_accuracy"] >= 0.6  # 4 topics: chance is 0.25
    sample = ["The striker scored twice in the final match", "Bakers share a spiced dessert recipe"]
    local = Predictor.from_registry(open_registry(s3_storage), "news@production")
    with serving(s3_storage, "news@production") as http:
        info = http.get("/v1/models/news").json()["input"]
        assert info["kind"] == "text" and info["text"]["max_length"] == 24
        answer = http.post("/v1/models/news:predict", json={"instances": sample})
        assert answer.status_code == 200
        expected = local.predict_instances(sample, max_instances=8)
        assert answer.json()["predictions"] == expected["predictions"]
        np.testing.assert_allclose(answer.json()["probabilities"], expected["probabilities"], 1e-5)
        refused = http.post("/v1/models/news:predict", json={"instances": [[1, 2, 3]]})
        assert refused.status_code == 422 and refused.json()["error"].startswith("instances[0]")


def test_a_png_parquet_trains_a_cnn_that_serves_base64_pngs(ray_session, s3_storage):
    from workloads.checkpoint import open_registry

    features, labels = digits_data()
    images = features.reshape(-1, 8, 8).astype(np.uint8)
    pngs = [base64.b64decode(png_base64(image)) for image in images]
    path = write_parquet(s3_storage, "myimages/digits.parquet", {"png": pngs, "digit": labels})
    sets = ["data.dataset=parquet", f"data.path={path}", "data.feature_columns=[png]"]
    sets += ["data.label_column=digit", "model.family=cnn", "model.channels=[8, 16]"]
    train_and_register(s3_storage, "debug", "pngs", [*sets, "name=user-png"])
    meta = open_registry(s3_storage).describe("pngs", 1)["meta"]
    assert meta["metrics"]["val_accuracy"] >= 0.4  # 2 epochs of a small CNN; chance is 0.1

    with serving(s3_storage, "pngs@production") as http:
        info = http.get("/v1/models/pngs").json()["input"]
        assert info["kind"] == "image" and info["shape"] == [1, 8, 8]
        sample = [png_base64(image) for image in images[:20]]
        as_png = http.post("/v1/models/pngs:predict", json={"instances": sample})
        lists = http.post("/v1/models/pngs:predict", json={"instances": images[:20].tolist()})
        assert as_png.status_code == 200 and as_png.json() == lists.json()
        wrong_size = png_base64(np.zeros((8, 10)))
        refused = http.post("/v1/models/pngs:predict", json={"instances": [wrong_size]})
        assert refused.status_code == 422 and "is 10x8 pixels; expected 8x8" in refused.text

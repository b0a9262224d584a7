"""Named features: records in requests, the model info route's feature list, CSV/Parquet rows.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_records.py -q

A wine MLP (13 named Parquet columns, as training writes its input spec) answers a record per
instance, in any key order, exactly as it answers the ordered list; a wrong key is named.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import tabular_checkpoint
from sklearn.datasets import load_wine

from serve import predictor as predictor_cli
from serve.predictor import Predictor
from serve.schemas import RequestError
from workloads.checkpoint import open_registry, save_checkpoint
from workloads.trust import CodePolicy

WINE = load_wine()
NAMES = list(WINE.feature_names)
TRUSTED = CodePolicy.CONFIGURED  # the checkpoints here are the test's own


@pytest.fixture(scope="module")
def wine(tmp_path_factory) -> Predictor:
    directory = tabular_checkpoint(
        tmp_path_factory.mktemp("wine"),
        NAMES,
        mean=WINE.data.mean(axis=0).tolist(),
        std=WINE.data.std(axis=0).tolist(),
        label="cultivar",
    )
    return Predictor.from_checkpoint(directory, name="wine", version=1, policy=TRUSTED)


def records(rows: np.ndarray, *, reverse: bool = False) -> list[dict]:
    names = NAMES[::-1] if reverse else NAMES
    return [{name: float(row[NAMES.index(name)]) for name in names} for row in rows]


def test_records_in_any_key_order_answer_as_ordered_lists(wine):
    rows = WINE.data[:5]
    as_lists = wine.predict_instances(rows.tolist(), max_instances=10)
    assert wine.predict_instances(records(rows), max_instances=10) == as_lists
    assert wine.predict_instances(records(rows, reverse=True), max_instances=10) == as_lists
    mixed = [records(rows[:1])[0], *rows[1:].tolist()]
    assert wine.predict_instances(mixed, max_instances=10) == as_lists


def test_the_model_info_lists_the_features_in_order(wine):
    described = wine.describe()["input"]
    assert [f["name"] for f in described["features"]] == NAMES
    assert {f["type"] for f in described["features"]} == {"double"}
    assert "record with the keys" in described["accepts"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("proline"), r'instances\[0\] lacks "proline";'),
        (lambda r: r.update(colour=1.0), r'instances\[0\] has unknown key\(s\) "colour";'),
        (lambda r: r.update({"x" * 100: 1}), r'unknown key\(s\) "x+\.\.\."'),
        (lambda r: r.update(alcohol="13"), r'instances\[0\]\["alcohol"\] is the string "13"'),
        (lambda r: r.update(alcohol=True), r'\["alcohol"\] is the boolean true'),
    ],
)
def test_a_bad_record_is_refused_naming_the_key(wine, change, message):
    record = records(WINE.data[:1])[0]
    change(record)
    with pytest.raises(RequestError, match=message) as caught:
        wine.schema.parse([record], max_instances=1)
    assert caught.value.status_code == 422


def test_a_model_without_named_features_still_refuses_objects(tmp_path):
    from helpers import digits_checkpoint

    digits = Predictor.from_checkpoint(
        digits_checkpoint(tmp_path / "d", seed=1, steps=1), name="d", version=1, policy=TRUSTED
    )
    with pytest.raises(RequestError, match=r"instances\[0\] is an object; expected a flat list"):
        digits.schema.parse([{"a": 1}], max_instances=1)
    assert "features" not in digits.describe()["input"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_predict_cli_reads_csv_and_parquet_rows(wine, local_storage, tmp_path, capsys, suffix):
    registry = open_registry(local_storage)
    registry.register("wine", wine_directory(wine, tmp_path), lineage={})
    table = pa.table({**{n: WINE.data[:4, i] for i, n in enumerate(NAMES)}, "cultivar": [0] * 4})
    path = tmp_path / f"rows.{suffix}"
    (pacsv.write_csv if suffix == "csv" else pq.write_table)(table, path)
    argv = ["--model", "wine", "--input", str(path), "--storage", local_storage.uri]
    assert predictor_cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = wine.predict_instances(WINE.data[:4].tolist(), max_instances=4)
    assert printed["predictions"] == expected["predictions"]
    np.testing.assert_allclose(printed["probabilities"], expected["probabilities"], rtol=1e-5)

    pq.write_table(table.drop_columns(["proline"]), tmp_path / "bad.parquet")
    argv[3] = str(tmp_path / "bad.parquet")
    with pytest.raises(RequestError, match=r'instances\[0\] lacks "proline"'):
        predictor_cli.main(argv)


def wine_directory(wine: Predictor, tmp_path):
    return save_checkpoint(tmp_path / "ckpt", model=wine.model, meta=wine.meta)

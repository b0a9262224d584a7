"""Bad data and bad runs are refused before Ray starts, each in one line that names the column
or setting and the fix: through `run_training` (which must not get as far as connecting to
Ray) and through the `raylane train` command (exit code 2, no traceback).

NaN, infinite and missing feature values are found by a Ray Data pass over each split; the check
of one batch is tested here, the whole pass in tests/integration/test_user_data.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.errors import ConfigError, DataError
from workloads.checkpoint import build_meta, save_checkpoint, upload_checkpoint
from workloads.config import load_job_config
from workloads.data import resolve, row_hashes
from workloads.datacheck import check_values, feature_stats
from workloads.models import build_model, model_spec
from workloads.runs import checkpoint_key
from workloads.trust import CodePolicy

ROWS = 60
RAYLANE = str(Path(sys.executable).parent / "raylane")


def table(**changes) -> pa.Table:
    """A good little dataset (features a, b; label y), with columns replaced by `changes`."""
    rng = np.random.default_rng(0)
    columns = {"a": rng.normal(size=ROWS), "b": rng.normal(size=ROWS), "y": np.arange(ROWS) % 2}
    return pa.table({**columns, **changes})


def with_one(values: list, value, at: int = 7) -> list:
    return [value if i == at else v for i, v in enumerate(values)]


LABELS = (np.arange(ROWS) % 2).tolist()
BAD_DATA = {
    "nan label": (
        table(y=with_one([float(v) for v in LABELS], float("nan"))),
        ["a", "b"],
        "label column 'y' is empty (null or NaN) in 1 of 60 rows: drop those rows",
    ),
    "null label": (
        table(y=pa.array(with_one(LABELS, None), pa.int64())),
        ["a", "b"],
        "label column 'y' is empty (null or NaN) in 1 of 60 rows: drop those rows",
    ),
    "text feature": (
        table(city=["x", "y", "z"] * (ROWS // 3)),
        ["a", "city"],
        "feature column(s) 'city' (text) are not numbers: encode them as numbers",
    ),
    "lists of text": (
        table(words=[["x", "y"]] * ROWS),
        ["words"],
        "feature column 'words' holds lists of string, not numbers",
    ),
    "one class": (
        table(y=[1] * ROWS),
        ["a", "b"],
        "label column 'y' has 1 class(es); a classifier needs at least 2",
    ),
    "missing column": (
        table(),
        ["a", "nope"],
        "column(s) nope not in",
    ),
}


def parquet_job(tmp_path, data: pa.Table, features: list[str], name: str = "bad"):
    path = tmp_path / "data.parquet"
    pq.write_table(data, path)
    return load_job_config(
        "debug",
        [f"name={name}", "data.dataset=parquet", f"data.path={path}",
         f"data.feature_columns=[{', '.join(features)}]", "data.label_column=y"],
    )  # fmt: skip


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if run_training gets as far as connecting to Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("run_training connected to Ray: the check came too late")

    monkeypatch.setattr("cluster.runtime.connect", refuse)


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_in_one_line_before_ray_starts(case, tmp_path, local_storage, no_ray):
    from workloads.train import run_training

    data, features, message = BAD_DATA[case]
    with pytest.raises(DataError) as caught:
        run_training(parquet_job(tmp_path, data, features), local_storage, verbose=False)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_nan_infinite_or_missing_feature_values_are_named_by_column(bad):
    b = pa.array(with_one(table().column("b").to_pylist(), bad), pa.float64())
    # A null reaches a Ray Data numpy batch as NaN, as it does here.
    batch = {"a": table()["a"].to_numpy(), "b": b.to_numpy(zero_copy_only=False)}
    with pytest.raises(DataError) as caught:
        check_values(feature_stats(batch, ["a", "b"], 2), ["a", "b"], split="training")
    assert str(caught.value).startswith(
        "feature column 'b' has 1 NaN, infinite or missing value(s) in the training split: drop "
        "those rows or fill them in"
    )


def test_a_list_feature_column_names_the_position_of_a_nan():
    rows = np.zeros((ROWS, 4))
    rows[3, 2] = np.nan
    stats = feature_stats({"pixels": rows}, ["pixels"], 4)
    with pytest.raises(DataError, match=r"feature column 'pixels' \(position 2 of its lists\)"):
        check_values(stats, ["pixels"], split="validation")


@pytest.mark.parametrize("row", [None, [1.0, 2.0, 3.0]])
def test_a_null_or_wrongly_sized_list_row_is_refused_not_crashed_on(row):
    rng = np.random.default_rng(1)
    rows = np.empty(ROWS, object)
    rows[:] = list(rng.normal(size=(ROWS, 4)))
    whole = row_hashes({"pixels": rows}, ["pixels"])
    rows[5] = row
    # The split still works (the other rows keep their hashes), so the check gets to say it.
    assert np.array_equal(
        np.delete(row_hashes({"pixels": rows}, ["pixels"]), 5), np.delete(whole, 5)
    )
    stats = feature_stats({"pixels": rows}, ["pixels"], 4)
    with pytest.raises(DataError) as caught:
        check_values(stats, ["pixels"], split="training")
    assert str(caught.value).startswith(
        "feature column 'pixels' has 1 row(s) in the training split that are null or not 4 "
        "numbers long: drop or fix those rows"
    )


def earlier_run(storage, tmp_path, name: str, *, hidden: list[int], fingerprint: str | None = None):
    """What an earlier run of `name` on the digits left in storage: a whole checkpoint."""
    config = load_job_config("debug", [f"name={name}", f"model.hidden_sizes={hidden}"])
    info = resolve(config.data, storage)
    spec = model_spec(config.model, input_shape=info.feature_shape, num_classes=info.num_classes)
    meta = build_meta(
        spec=spec, input_spec=info.input_spec(), config=config.model_dump(), run_name=name,
        data_fingerprint=fingerprint or info.fingerprint, data_uri="s3://elsewhere/data",
        epoch=1, metrics={"val_accuracy": 0.5},
    )  # fmt: skip
    directory = save_checkpoint(
        tmp_path / "earlier", model=build_model(spec, policy=CodePolicy.CONFIGURED), meta=meta
    )
    upload_checkpoint(storage, directory, checkpoint_key(f"runs/{name}", 1))


@pytest.mark.parametrize(
    "earlier, message",
    [
        ({"hidden": [32], "fingerprint": "0123456789abcdef"}, "holds checkpoints of other data"),
        ({"hidden": [64]}, "holds checkpoints of another model (hidden_sizes [64] -> [32]"),
    ],
)
def test_a_run_name_with_other_data_or_model_is_not_resumed(
    local_storage, tmp_path, no_ray, earlier, message
):
    from workloads.train import run_training

    earlier_run(local_storage, tmp_path, "mixed", **earlier)
    with pytest.raises(ConfigError) as caught:
        run_training(load_job_config("debug", ["name=mixed"]), local_storage, verbose=False)
    run_uri = local_storage.uri_for("runs/mixed")
    assert message in str(caught.value)
    assert f"choose a new run name (--name / name=) or delete {run_uri}" in str(caught.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "data.feature_columns=[a, city]"], "feature column(s) 'city' (text)"),
        (["--set", "data.feature_columns=[a, b]", "--set", "data.label_column=nanlabel"],
         "label column 'nanlabel' is empty (null or NaN)"),
    ],
)  # fmt: skip
def test_the_train_command_refuses_bad_data_with_one_line_and_exit_code_2(tmp_path, args, message):
    path = tmp_path / "data.parquet"
    nan_labels = with_one([float(v) for v in LABELS], float("nan"))
    pq.write_table(table(city=["x", "y", "z"] * (ROWS // 3), nanlabel=nan_labels), path)
    result = subprocess.run(
        [RAYLANE, "train", "--storage", str(tmp_path / "art"), "--set", "data.dataset=parquet",
         "--set", f"data.path={path}", "--set", "data.label_column=y", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stdout + result.stderr

"""Evaluation reports, comparisons and the promotion check, as a user meets them: versions are
small digits MLPs (tests/helpers.py) registered on local storage with their reports; no Ray.
The commands are the README's "Evaluate and compare" section."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import check_report, digits_checkpoint, register_local

from cluster.errors import DataError
from raylane.models import main
from workloads.checkpoint import input_spec_of, open_registry, read_meta
from workloads.data import read_split
from workloads.registration import report_line

RAYLANE = str(Path(sys.executable).parent / "raylane")


@pytest.fixture
def registry(local_storage):
    return open_registry(local_storage)


def register(registry, checkpoint: Path) -> int:
    """Register a checkpoint as the next digits version, with its report."""
    return register_local(registry, checkpoint)["version"]


def models(registry, *args) -> int:
    return main(["--storage", registry.storage.uri, *args])


def test_a_registered_version_has_a_report_with_scikit_learns_numbers(registry, trained_digits):
    version = register(registry, trained_digits(8))  # not perfect: the numbers mean something
    key = registry.report_key("digits", version, "validation")
    report = check_report(registry.storage, key, trained_digits(8))
    assert 0.5 < report["metrics"]["accuracy"] < 1
    assert report["model"] == f"digits:{version}" and report["data"]["split"] == "validation"


def test_a_checkpoint_without_recorded_data_registers_without_a_report(registry, tmp_path):
    record = register_local(registry, digits_checkpoint(tmp_path / "bare", seed=1, steps=1))
    assert record["version"] == 1 and record["report_uri"] is None
    assert "does not record its training data" in record["report_note"]
    assert registry.reports("digits", 1) == []
    assert "raylane models evaluate digits:1" in report_line(record)


def test_ece_is_the_row_weighted_gap_between_confidence_and_accuracy():
    from workloads.report import build_report

    # 100 rows at confidence 0.9 of which 60 are right, 100 at 0.55 of which 55 are right.
    probabilities = np.array([[0.9, 0.1]] * 100 + [[0.55, 0.45]] * 100)
    labels = np.array([0] * 60 + [1] * 40 + [0] * 55 + [1] * 45)
    report = build_report(probabilities, labels, class_names=["a", "b"], about={})
    assert report["metrics"]["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.0)
    assert report["calibration"]["count"][13] == 100  # 0.9 falls in the bin [0.867, 0.933)


def test_evaluate_on_other_data_stores_a_second_report(registry, trained_digits, tmp_path, capsys):
    register(registry, trained_digits(60))
    meta = read_meta(trained_digits(60))
    features, labels = read_split(
        meta["data_uri"], input_spec_of(meta), validation_fraction=0.2, split="train"
    )
    path = tmp_path / "new-digits.parquet"
    column = pa.FixedSizeListArray.from_arrays(pa.array(features[:100].ravel()), 64)
    pq.write_table(pa.table({"features": column, "label": labels[:100]}), path)

    assert models(registry, "evaluate", "digits:1", "--data", str(path)) == 0
    out = capsys.readouterr().out
    assert f"digits:1 on every row of {path}: 100 rows" in out
    assert "report: " in out and "/reports/1/data-" in out

    assert models(registry, "show", "digits:1") == 0
    shown = capsys.readouterr().out
    assert shown.count("evaluation: ") == 2 and "validation split (20%)" in shown

    pq.write_table(pa.table({"pixels": column, "label": labels[:100]}), path)
    with pytest.raises(DataError, match="lacks the column.s. features the model reads"):
        models(registry, "evaluate", "digits:1", "--data", str(path))


def test_compare_finds_a_weak_version_significantly_worse_and_a_twin_equal(
    registry, trained_digits, capsys
):
    register(registry, trained_digits(60))  # digits:1
    register(registry, trained_digits(2))  # digits:2, two steps: weak
    register(registry, trained_digits(60))  # digits:3, the same model as digits:1

    assert models(registry, "compare", "digits:1", "digits:2") == 0
    out = capsys.readouterr().out
    assert out.startswith("373 rows: the validation split (20%) of ")
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "digits:1", "digits:2"]
    assert "digits:2 is worse than digits:1 by" in out and "significant (McNemar" in out

    assert models(registry, "compare", "digits:1", "digits:3") == 0
    assert "no difference: digits:1 and digits:3 get the same rows right" in capsys.readouterr().out


def test_promote_refuses_a_significantly_worse_version_unless_forced(
    registry, trained_digits, capsys
):
    register(registry, trained_digits(60))
    register(registry, trained_digits(2))
    models(registry, "promote", "digits:1", "--alias", "production")

    refused = subprocess.run(
        [RAYLANE, "models", "promote", "digits:2", "--alias", "production"],
        env={**os.environ, "RAYLANE_STORAGE": registry.storage.uri},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: not promoting: digits:2 is worse than digits:1 by")
    assert refused.stderr.strip().endswith("promote it anyway with --force")
    assert registry.resolve("digits@production") == ("digits", 1)

    assert models(registry, "promote", "digits:2", "--alias", "production", "--force") == 0
    assert models(registry, "promote", "digits:1", "--alias", "production") == 0
    out = capsys.readouterr().out
    assert "checked against digits@production" in out and "digits:1 is better" in out

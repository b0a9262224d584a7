"""Smoke test of the benchmarks (bench/): each runs in its --quick mode, in this process, on
the test session's SeaweedFS and one shared local Ray, and must write a JSON result whose
ratio rows the summary table shows. The numbers are not checked: smoke-sized runs on a shared
2-core machine measure nothing; `make bench` does."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from conftest import TEST_BUCKET

from bench import run_all

pytestmark = pytest.mark.integration
RATIO_FIELDS = {"name", "label", "raylane", "baseline", "unit", "goal", "value", "met"}
# Not smoke-tested, to keep make test short: optimize_train's quick mode is six Ray Train runs
# of the commands test_train.py's fine-tune, prune and distill tests already run;
# train_memory's is four Ray Train runs of the ddp and fsdp wrapping test_train.py trains with;
# checkpoint_cost's is two runs of the sync and async uploads test_train.py checks (and its
# `checkpoint_s` feeds bench.train's row, which is smoked).
NOT_SMOKED = {"optimize_train", "train_memory", "checkpoint_cost"}


@pytest.fixture
def bench_bucket(s3_server, monkeypatch):
    monkeypatch.setenv("RAYLANE_BENCH_BUCKET", f"{TEST_BUCKET}/bench-{uuid.uuid4().hex[:8]}")


@pytest.mark.timeout(600)
def test_every_benchmark_writes_its_ratios_in_quick_mode(ray_session, bench_bucket, tmp_path):
    import importlib

    runs = []
    for name in [n for n in run_all.BENCHMARKS if n not in NOT_SMOKED]:
        module = importlib.import_module(f"bench.{name}")
        result = module.run(quick=True, out_dir=tmp_path)
        runs.append({"name": name, "ok": True, "seconds": result.seconds, "error": None})

        written = json.loads((tmp_path / f"{name}.json").read_text())
        assert written["quick"] is True and written["machine"]["cores"] >= 1
        assert written["ratios"], f"{name} reported no ratios"
        for row in written["ratios"]:
            assert set(row) >= RATIO_FIELDS, f"{name}: {row}"
            # A ratio may be NaN only with a note that says why (e.g. a target never reached).
            assert math.isfinite(row["value"]) or row["note"], f"{name}: {row}"
            if row["goal"]:
                assert row["met"] in (True, False)

    summary = run_all.summarize(tmp_path, runs, quick=True, total_s=1.0)
    table_rows = [
        line for line in summary.splitlines() if line.startswith("| ") and "---" not in line
    ]
    expected = sum(
        len(json.loads((tmp_path / f"{r['name']}.json").read_text())["ratios"]) for r in runs
    )
    assert len(table_rows) == expected + 1  # the header
    assert (tmp_path / "summary.md").read_text() == summary


def test_a_target_never_reached_is_a_missed_goal_in_the_table():
    from dataclasses import asdict

    from bench.common import Ratio, markdown_table

    row = Ratio("asha", "time to target: ASHA vs random", float("nan"), 80.0, "s", "<= 0.3")
    assert row.met is False
    table = markdown_table([{"name": "sweep", "ratios": [asdict(row)]}])
    assert "| never | 80.00 s | - | <= 0.3 | **no** |" in table

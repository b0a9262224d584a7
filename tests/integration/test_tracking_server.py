"""Experiment tracking the way the README turns it on: a real `mlflow server` on 127.0.0.1, a
sweep run by the `raylane` command on a Ray head started with `ray start --head`, artifacts in a
real SeaweedFS; then MLflow's own client reads back the sweep's parent run, one nested run per
trial with its metric per epoch, and the registered version's run with its report.

Its own module: it uses `ray_head`, so no other Ray of this test process may be alive."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import wait_for

from cluster.s3server import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
REPORT_FILES = {"report.json", "report.html", "confusion_matrix.png", "roc_curves.png",
                "reliability.png"}  # fmt: skip


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server --host 127.0.0.1 --port P --backend-store-uri sqlite:///mlflow.db
    --workers 1` in a directory of its own (its artifacts go to ./mlartifacts there); yields its
    URI. One worker: the default four take 40 s to start on 2 busy cores."""
    port = free_port()
    server = subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", "sqlite:///mlflow.db", "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers share its process group: stopped together
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{uri}/health"), timeout_s=90, what="the MLflow server")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def test_a_tracked_sweep_reads_back_from_an_mlflow_server(
    ray_head, mlflow_server, s3_storage, tmp_path
):
    from mlflow import MlflowClient

    env, _ = ray_head
    token = "mlflow-token-" + secrets.token_hex(8)  # must never be printed or passed on
    env = {**env, "RAYLANE_STORAGE": s3_storage.uri, "MLFLOW_TRACKING_URI": mlflow_server,
           "MLFLOW_TRACKING_TOKEN": token}  # fmt: skip
    sweep = subprocess.run(
        [BIN / "raylane", "sweep", "--config", "debug-sweep", "--set", "scheduler.asha=true",
         "--register", "digits"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert token not in sweep.stdout + sweep.stderr
    assert "registered: digits:1" in sweep.stdout and "evaluation: s3://" in sweep.stdout

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("raylane").experiment_id])
    kinds = {kind: [r for r in runs if r.data.tags.get("raylane.kind") == kind]
             for kind in ("sweep", "train", "register")}  # fmt: skip
    assert len(runs) == 5 and [len(kinds[k]) for k in kinds] == [1, 3, 1]
    [parent], [registration] = kinds["sweep"], kinds["register"]
    assert parent.info.status == "FINISHED" and parent.data.params["num_samples"] == "3"
    assert parent.data.tags["raylane.registered"] == "digits:1"
    assert {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "plots")} == {
        "debug-sweep-trials.png",
        "debug-sweep-params.png",
    }

    summary = s3_storage.read_json("sweeps/debug-sweep/summary.json")
    rows = {row["trial"]: row for row in summary["rows"]}
    for trial in kinds["train"]:
        tags, row = trial.data.tags, rows[trial.data.tags["raylane.trial"]]
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.info.status == "FINISHED" and "train.lr" in trial.data.params
        assert tags["raylane.status"] == row["status"]
        assert tags["raylane.early_stopped"] == str(row["status"] == "stopped early")
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val_accuracy")]
        assert steps == list(range(1, len(steps) + 1))  # one point per epoch, from rank 0
        # A trial logs each epoch before reporting it, so one stopped early may have logged
        # an epoch more than Tune recorded before ending it.
        stopped = row["status"] == "stopped early"
        assert len(steps) == row["epochs"] or (stopped and len(steps) == row["epochs"] + 1)
        assert token not in str(trial.data.params)

    assert registration.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert registration.info.run_name == "digits:1"
    run_id = registration.info.run_id
    assert {Path(f.path).name for f in client.list_artifacts(run_id, "evaluation")} == (
        REPORT_FILES
    )
    assert [f.path for f in client.list_artifacts(run_id, "registry")] == ["registry/version.json"]

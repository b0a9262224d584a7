"""MLflow tracking without Ray: registration and evaluation runs in a real file store and a
real SQLite store, read back with MLflow's own client; tracking off loads no MLflow; a URI with
credentials is refused; a dead tracking server costs a training loop one warning, not a crash.
The sweep and training runs (Ray workers, a tracking server) are in
tests/integration/test_tracking_server.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import register_local

from cluster.errors import ConfigError
from cluster.s3server import free_port
from workloads.checkpoint import open_registry
from workloads.tracking import EpochLogger, TrackedRun, Tracking, absolute_uri

RAYLANE = str(Path(sys.executable).parent / "raylane")
REPORT_FILES = {"report.json", "report.html", "confusion_matrix.png", "roc_curves.png",
                "reliability.png"}  # fmt: skip


def artifacts(client, run_id: str, path: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def test_registration_logs_the_version_and_its_report_to_a_file_store(
    local_storage, trained_digits, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
    uri = absolute_uri(str(tmp_path / "mlruns"))
    registry = open_registry(local_storage)
    registered = register_local(registry, trained_digits(60), tracking=Tracking(uri))

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("raylane").experiment_id])
    assert run.info.run_name == "digits:1" and run.info.status == "FINISHED"
    assert (
        run.data.tags["raylane.kind"] == "register"
        and run.data.params["run_name"] == "test-digits-1"
    )
    assert run.data.metrics["accuracy"] == pytest.approx(registered["metrics"]["accuracy"])
    assert artifacts(client, run.info.run_id, "evaluation") == REPORT_FILES
    assert artifacts(client, run.info.run_id, "registry") == {"version.json"}


def test_evaluate_logs_a_run_to_the_sqlite_store_tracking_uri_names(
    local_storage, trained_digits, tmp_path
):
    from mlflow import MlflowClient

    register_local(open_registry(local_storage), trained_digits(60))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    evaluated = subprocess.run(
        [RAYLANE, "models", "evaluate", "digits:1", "--tracking-uri", "sqlite:///mlflow.db",
         "--storage", local_storage.uri],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("raylane").experiment_id])
    assert run.data.tags["raylane.kind"] == "evaluate"
    assert artifacts(client, run.info.run_id, "evaluation") == REPORT_FILES


def test_with_tracking_off_no_command_loads_mlflow(local_storage, trained_digits):
    script = f"""
import sys
import raylane.models, tune.sweep, workloads.train, workloads.worker
from cluster.storage import Storage
from workloads.checkpoint import open_registry
from workloads.registration import register_checkpoint
registry = open_registry(Storage({local_storage.uri!r}))
register_checkpoint(registry, "digits", Storage({str(trained_digits(2))!r}), "", lineage={{}})
print("mlflow" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_tracking_uri_with_credentials_is_refused_and_paths_become_absolute(
    tmp_path, monkeypatch
):
    with pytest.raises(ConfigError, match="set MLFLOW_TRACKING_USERNAME"):
        Tracking("https://alice:s3cret@mlflow.example.com")
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("./mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_dead_tracking_server_costs_the_loop_one_warning(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    log_epoch = EpochLogger(TrackedRun(f"http://127.0.0.1:{free_port()}", "0" * 32, "1"))
    for epoch in (1, 2, 3):
        log_epoch({"val_accuracy": 0.9}, step=epoch)
    assert capsys.readouterr().out.count("warning: MLflow logging stopped for this run") == 1

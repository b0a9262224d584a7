"""Sweeps on a real local Ray and a real SeaweedFS: ASHA early stopping, registry hand-off with
the version's evaluation report, trial errors; and batched evaluation with Ray Data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import check_report, digits_checkpoint, register_local

from cluster.errors import ConfigError
from raylane.models import main as models
from tune.config import load_sweep_config
from tune.sweep import run_sweep
from workloads.checkpoint import open_registry
from workloads.data import prepare
from workloads.evaluate import evaluate_version

pytestmark = pytest.mark.integration


def test_asha_sweep_stops_trials_early_and_registers_the_best(ray_session, s3_storage, tmp_path):
    sweep = load_sweep_config("digits-sweep")
    result = run_sweep(sweep, s3_storage, register="digits", promote="staging", plot_dir=tmp_path)

    assert len(result.rows) == 8 and not result.errors
    trained = sum(row["epochs"] for row in result.rows)
    assert trained <= 0.6 * 8 * sweep.scheduler.max_epochs, "ASHA should stop most trials early"
    assert any(row["status"] == "stopped early" for row in result.rows)

    best = max(row["metric"] for row in result.rows if row["metric"] is not None)
    registry = open_registry(s3_storage)
    name, version = registry.resolve("digits@staging")
    meta = registry.describe(name, version)["meta"]
    assert meta["metrics"]["val_accuracy"] == pytest.approx(best)
    assert s3_storage.exists("sweeps/digits-sweep/trials.png")
    assert (tmp_path / "digits-sweep-trials.png").stat().st_size > 10_000
    summary = s3_storage.read_json("sweeps/digits-sweep/summary.json")
    assert summary["registered"]["version"] == version
    assert s3_storage.exists("sweeps/digits-sweep/params.png")

    # Registered with its evaluation report, in S3 beside the version.
    key = registry.report_key("digits", version, "validation")
    assert result.registered["report_uri"] == s3_storage.uri_for(key)
    report = check_report(s3_storage, key, registry.download("digits", version, tmp_path / "v"))
    assert report["metrics"]["accuracy"] == pytest.approx(best)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAYLANE_STORAGE", s3_storage.uri)
        fresh = subprocess.run(
            [
                sys.executable,
                "-m",
                "workloads.evaluate",
                registry_uri(s3_storage, version),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["metrics"]["val_accuracy"] == pytest.approx(best)


def registry_uri(storage, version: int) -> str:
    return storage.uri_for(open_registry(storage).version_key("digits", version))


def test_a_failing_trial_is_reported_and_the_sweep_goes_on(ray_session, local_storage, tmp_path):
    sweep = load_sweep_config(
        "debug-sweep",
        [
            "num_samples=1",
            "space={model.d_model: {type: grid, values: [32, 30]}}",
            "overrides=[train.num_workers=1, model.family=transformer, data.dataset=synthetic-text,"
            " data.rows=600, model.num_heads=4, model.num_layers=1]",
        ],
    )
    result = run_sweep(sweep, local_storage, plot_dir=tmp_path)

    assert len(result.rows) == 2
    assert [row["status"] for row in result.rows].count("errored") == 1
    assert (
        len(result.errors) == 1
        and "d_model (30) must be divisible by num_heads" in result.errors[0]
    )
    assert result.best["metric"] is not None


def test_ray_data_batched_evaluation_equals_the_in_process_report(
    ray_session, s3_storage, tmp_path, one_thread, capsys
):
    data = prepare(s3_storage, "digits")
    registry = open_registry(s3_storage)
    checkpoint = digits_checkpoint(tmp_path / "v1", seed=1, steps=8, data_uri=data.uri)
    register_local(registry, checkpoint)  # evaluated in this process
    in_process = s3_storage.read_json(
        f"{registry.report_key('digits', 1, 'validation')}/report.json"
    )

    # `raylane models evaluate digits:1 --inference ray`, on this module's Ray
    models(["--storage", s3_storage.uri, "evaluate", "digits:1", "--inference", "ray", "--json"])
    batched = json.loads(capsys.readouterr().out)["report"]

    assert (in_process["inference"], batched["inference"]) == ("local", "ray")
    assert batched["confusion_matrix"] == in_process["confusion_matrix"]
    assert batched["metrics"] == pytest.approx(in_process["metrics"])
    everything = evaluate_version(registry, "digits", 1, data=data.uri, inference="ray")
    assert everything["report"]["rows"] == 1797
    assert everything["uri"].startswith(s3_storage.uri_for("registry/digits/reports/1/data-"))


def test_an_int8_version_evaluates_the_same_with_ray_data_as_in_process(
    ray_session, s3_storage, tmp_path, one_thread, capsys
):
    """Ray Data actors rebuild an int8 version from its state dict (its ONNX graph)."""
    from workloads.optimize import main as optimize

    data = prepare(s3_storage, "digits")
    registry = open_registry(s3_storage)
    register_local(registry, digits_checkpoint(tmp_path / "v1", seed=1, steps=8, data_uri=data.uri))
    optimize(["quantize", "--model", "digits:1", "--storage", s3_storage.uri])
    in_process = s3_storage.read_json(
        f"{registry.report_key('digits', 2, 'validation')}/report.json"
    )
    capsys.readouterr()
    models(["--storage", s3_storage.uri, "evaluate", "digits:2", "--inference", "ray", "--json"])
    batched = json.loads(capsys.readouterr().out)["report"]
    assert batched["inference"] == "ray"
    assert batched["confusion_matrix"] == in_process["confusion_matrix"]


def test_unknown_space_key_fails_before_any_trial(local_storage):
    sweep = load_sweep_config(
        "debug-sweep", ["space={train.lrr: {type: uniform, low: 0, high: 1}}"]
    )
    with pytest.raises(ConfigError, match="space key 'train.lrr' is not a training config field"):
        run_sweep(sweep, local_storage)


def test_a_saturated_metric_registers_the_checkpoint_the_summary_names(
    ray_session, local_storage, tmp_path
):
    """Every epoch of every trial reaches accuracy 1.0: the tie goes to the lowest validation
    loss, then the later epoch, and the summary, the version and its lineage agree on both."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.uniform(3, 5, size=300) * rng.choice([-1, 1], size=300)  # a wide margin at 0
    path = tmp_path / "easy.parquet"
    pq.write_table(
        pa.table({"x": x, "y": rng.normal(size=300), "label": (x > 0).astype(int)}), path
    )
    overrides = [
        "train.num_workers=1",
        "train.lr=0.01",
        "train.epochs=4",
        "data.dataset=parquet",
        f"data.path={path}",
        "data.feature_columns=[x, y]",
    ]
    config = tmp_path / "easy-sweep.yaml"
    config.write_text(json.dumps({"name": "easy", "train_config": "debug", "num_samples": 2,
        "overrides": overrides, "space": {"train.lr": {"type": "choice", "values": [0.01, 0.02]}},
        "scheduler": {"asha": False, "max_epochs": 4}}))  # fmt: skip
    sweep = load_sweep_config(str(config))
    result = run_sweep(sweep, local_storage, register="easy", plot_dir=tmp_path)

    assert {row["metric"] for row in result.rows} == {1.0}
    losses = {
        (row["trial"], row["epoch"]): row["val_loss"] for row in result.rows if row["val_loss"]
    }
    assert result.best["val_loss"] == min(losses.values())
    registry = open_registry(local_storage)
    lineage = registry.describe("easy", result.registered["version"])["lineage"]
    assert (lineage["trial"], lineage["epoch"]) == (result.best["trial"], result.best["epoch"])
    assert result.registered["epoch"] == result.best["epoch"]
    stored = local_storage.read_json("sweeps/easy/summary.json")
    assert stored["best"]["epoch"] == result.best["epoch"] == lineage["epoch"]


def test_an_in_trial_sweep_starts_no_train_workers_and_registers_like_a_trainer_sweep(
    ray_session, local_storage, tmp_path
):
    """One-worker trials train inside the Tune trial (trial_mode auto): no Ray Train controller
    or worker is started, and the sweep's run record, summary and registered version have the
    same shape as a sweep whose trials fit a TorchTrainer."""
    from ray.util.state import list_actors

    def train_actors() -> set[str]:
        names = ("TrainController", "RayTrainWorker")
        actors = list_actors(limit=10_000, raise_on_missing_output=False)
        return {a.actor_id for a in actors if any(n in a.class_name for n in names)}

    def sweep_with(mode: str):
        sweep = load_sweep_config(
            "debug-sweep", [f"name=shape-{mode}", "num_samples=1", f"trial_mode={mode}"]
        )
        return run_sweep(sweep, local_storage, register=f"shape-{mode}", plot_dir=tmp_path)

    before = train_actors()
    in_trial = sweep_with("auto")
    assert train_actors() == before, "an in-trial sweep started Ray Train actors"
    trainer = sweep_with("trainer")
    assert train_actors() != before  # the check above can see them

    def shape(result, mode: str):
        trial = f"sweeps/shape-{mode}/trials/trial-{result.best['trial']}"
        layout = sorted(k.removeprefix(trial).split("/")[1] for k in local_storage.list(trial))
        registry = open_registry(local_storage)
        described = registry.describe(f"shape-{mode}", result.registered["version"])
        return {
            "rows": [sorted(row) for row in result.rows],
            "best": sorted(result.best),
            "registered": sorted(result.registered),
            "lineage": sorted(described["lineage"]),
            "meta": sorted(described["meta"]),
            # Ray Train's own .validate_storage_marker aside: raylane's run record
            "layout": sorted({name for name in layout if not name.startswith(".")}),
            "summary": sorted(local_storage.read_json(f"sweeps/shape-{mode}/summary.json")),
        }

    assert shape(in_trial, "auto") == shape(trainer, "trainer")
    assert in_trial.registered["version"] == 1 and not in_trial.errors
    assert in_trial.best["epoch"] == 2 and in_trial.best["metric"] > 0.5
    assert local_storage.exists(
        f"sweeps/shape-auto/trials/trial-{in_trial.best['trial']}/summary.json"
    )

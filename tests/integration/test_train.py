"""Ray Train end to end on a real local Ray and a real SeaweedFS: accuracy, checkpoints,
fault tolerance, resumption, storage errors that leave nothing behind, and the training
metrics on Ray's Prometheus endpoint. Storage lost in the middle of a run:
tests/integration/test_storage_outage.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import metric_sum, scrape_metrics, wait_for
from ray.train import UserCallback

from cluster.errors import StorageError
from cluster.storage import Storage
from workloads.config import load_job_config
from workloads.runs import stored_checkpoints
from workloads.train import run_training
from workloads.trust import CodePolicy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def metrics_every_second():
    """Set before the module's Ray starts, so its workers export metrics every 1 s, not 10 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_metrics_report_interval_ms", "1000")
        yield


def attempts(storage: Storage, name: str) -> list[dict]:
    return [storage.read_json(k) for k in storage.list(f"runs/{name}/attempts")]


def newest_whole(storage: Storage, name: str) -> int:
    """The epoch of the run's newest complete checkpoint (0: none), without touching any."""
    whole = [c.epoch for c in stored_checkpoints(storage, f"runs/{name}") if c.complete]
    return max(whole, default=0)


def test_digits_cnn_on_s3_reaches_95_percent_and_reloads_in_a_fresh_process(
    ray_session, s3_storage
):
    summary = run_training(load_job_config("digits-cnn"), s3_storage)

    assert summary.metrics["val_accuracy"] >= 0.95
    files = s3_storage.list(summary.best_checkpoint_key)
    names = {key.rsplit("/", 1)[1] for key in files}
    assert {"model.safetensors", "meta.json", "train_state.pt"} <= names
    assert s3_storage.read_json("runs/digits-cnn/summary.json")["metrics"]["val_accuracy"] >= 0.95

    fresh = subprocess.run(
        [sys.executable, "-m", "workloads.evaluate", summary.best_checkpoint_uri, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert fresh.returncode == 0, fresh.stderr
    result = json.loads(fresh.stdout)
    assert result["metrics"]["val_accuracy"] == pytest.approx(summary.metrics["val_accuracy"])
    assert result["metrics"]["val_accuracy"] == pytest.approx(result["recorded"]["val_accuracy"])


# fsdp too: its restart restores the sharded optimizer state from the gathered checkpoint.
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_worker_redoes_at_most_the_epoch_in_flight_and_says_so_in_one_line(
    ray_session, s3_storage, capfd, strategy
):
    from ray.util.state import list_actors

    name = f"killed-{strategy}"
    config = load_job_config(
        "debug", [f"name={name}", "train.epochs=10", f"train.strategy={strategy}"]
    )
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(summary=run_training(config, s3_storage, verbose=False))
    )
    thread.start()
    wait_for(
        lambda: newest_whole(s3_storage, name) >= 3 or not thread.is_alive(),
        timeout_s=120,
        what="the checkpoint of epoch 3",
    )
    workers = list_actors(
        address=ray_session.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    last_uploaded = newest_whole(s3_storage, name)
    os.kill(workers[-1].pid, signal.SIGKILL)  # a real process kill, not an exception
    thread.join(timeout=300)

    assert outcome["summary"].epochs == 10
    first, restart = attempts(s3_storage, name)
    assert first["start_epoch"] == 0 and restart["launch"] == first["launch"]
    # Every checkpoint uploaded before the kill is kept: only the epoch in flight is redone.
    assert last_uploaded <= restart["start_epoch"] <= last_uploaded + 1
    assert re.fullmatch(r"training worker \d died", restart["after"])
    console = "".join(capfd.readouterr())
    line = f"{restart['after']}; restart 1 (at most 2), resuming from the checkpoint of epoch "
    assert console.count(line + str(restart["start_epoch"])) == 1, console[-3000:]
    assert "Traceback" not in console and "ActorDiedError" not in console


def test_rerunning_the_same_name_resumes_and_a_finished_run_starts_no_workers(
    ray_session, local_storage
):
    first = run_training(load_job_config("debug", ["name=again"]), local_storage, verbose=False)
    longer = load_job_config("debug", ["name=again", "train.epochs=3"])
    second = run_training(longer, local_storage, verbose=False)
    third = run_training(longer, local_storage, verbose=False)

    assert first.epochs == 2 and second.epochs == 3
    # The third run finished before with this very config: it returned the stored summary
    # without reading data or starting a worker group, so no attempt was recorded for it.
    assert [a["start_epoch"] for a in attempts(local_storage, "again")] == [0, 2]
    assert third == second
    epochs = [k for k in local_storage.list_dirs("runs/again") if k.startswith("checkpoint-")]
    assert epochs and max(epochs) == "checkpoint-epoch-0003"


class MetricsLog(UserCallback):
    """A Ray Train callback (it runs in the controller, on this machine) that appends rank 0's
    metrics of every report to a local JSON-lines file: the run's full history, which storage
    no longer holds once checkpoints are deleted."""

    def __init__(self, path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as log:
            log.write(json.dumps(metrics[0]) + "\n")


def test_async_uploads_keep_the_best_k_and_the_latest_whole_and_metrics_reach_prometheus(
    ray_session, local_storage, tmp_path
):
    """One run (each Ray Train run costs ~15 s of start-up here) shows three things a user
    sees: `keep_checkpoints` leaves the best k and the latest, the async uploads leave whole
    checkpoints and no temporary directories, and the epoch metrics reach /metrics."""
    import glob
    import tempfile

    from ray import cloudpickle

    from workloads.checkpoint import load_model

    def leftovers():  # under the Ray lock no other run writes checkpoints on this machine
        return set(glob.glob(f"{tempfile.gettempdir()}/raylane-ckpt-*"))

    before = leftovers()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable there
    log = MetricsLog(tmp_path / "metrics.jsonl")
    config = load_job_config("debug", ["name=kept", "train.epochs=6", "train.keep_checkpoints=2",
                                       "train.checkpoint_upload=async"])  # fmt: skip
    summary = run_training(config, local_storage, callbacks=[log], verbose=False)

    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4, 5, 6]
    # Ray ranks equal scores by report order, the later one first.
    ranked = sorted(history, key=lambda m: (m["val_accuracy"], m["epoch"]), reverse=True)
    expected = {f"checkpoint-epoch-{m['epoch']:04d}" for m in ranked[:2]}
    expected.add("checkpoint-epoch-0006")  # the latest, to resume from, even if not the best
    stored = {k for k in local_storage.list_dirs("runs/kept") if k.startswith("checkpoint-")}
    assert stored == expected and len(stored) in (2, 3)

    directory = local_storage.local_root / summary.best_checkpoint_key
    _, meta = load_model(directory, policy=CodePolicy.for_loading())
    assert meta["metrics"]["val_accuracy"] == pytest.approx(summary.metrics["val_accuracy"])
    assert leftovers() <= before  # Ray's upload thread removed each directory after uploading

    def exported() -> bool:
        return metric_sum(scrape_metrics(), "ray_raylane_train_epoch", run="kept") == 6

    wait_for(exported, timeout_s=30, interval_s=1, what="raylane_train_epoch 6 on /metrics")
    text = scrape_metrics()
    for split in ("train", "validation"):
        assert metric_sum(text, "ray_raylane_train_loss", run="kept", split=split) > 0
    assert 0.5 < metric_sum(text, "ray_raylane_train_val_accuracy", run="kept") <= 1
    assert metric_sum(text, "ray_raylane_train_samples_per_second", run="kept") > 0


@pytest.mark.parametrize(
    "preset, floor",
    [("tabular-mlp", 0.90), ("text-transformer", 0.80), ("text-lstm", 0.90)],
)
def test_mlp_transformer_and_lstm_presets_beat_the_majority_class_by_far(
    ray_session, local_storage, preset, floor
):
    from workloads.checkpoint import InputSpec
    from workloads.data import read_split

    summary = run_training(load_job_config(preset), local_storage, verbose=False)
    meta = local_storage.read_json(f"{summary.best_checkpoint_key}/meta.json")
    _, labels = read_split(
        meta["data_uri"],
        InputSpec.from_dict(meta["input"]),
        validation_fraction=0.2,
        split="validation",
    )
    majority = max((labels == c).mean() for c in set(labels.tolist()))
    assert summary.metrics["val_accuracy"] >= max(floor, majority + 0.2)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, "cannot reach the S3 endpoint"),
        (
            {"AWS_ACCESS_KEY_ID": "raylane-wrong-key", "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_storage_trouble_fails_fast_and_writes_nothing(s3_storage, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageError, match=message) as caught:
        run_training(load_job_config("debug"), s3_storage, verbose=False)
    assert "wrong-secret" not in str(caught.value)
    monkeypatch.undo()
    assert Storage(s3_storage.uri).list() == []  # a fresh client, with the right settings


def test_missing_bucket_is_named_and_nothing_is_written(s3_server, s3_storage):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_training(load_job_config("debug"), Storage("s3://no-such-bucket/x"), verbose=False)
    assert s3_storage.list() == []


class CountingShard:
    """A real Ray Data iterator that counts the epochs it streamed (a spy, not a stand-in)."""

    def __init__(self, iterator):
        self.iterator, self.epochs = iterator, 0

    def iter_torch_batches(self, **kwargs):
        self.epochs += 1
        return self.iterator.iter_torch_batches(**kwargs)


@pytest.mark.parametrize("cache_bytes, streamed", [(2**20, 1), (1000, 3)])
def test_epoch_data_reads_ray_data_once_when_the_shard_fits(ray_session, cache_bytes, streamed):
    """Every epoch sees every row once, shuffled differently; a shard that fits the cache is
    streamed from Ray Data in the first epoch only, a larger one every epoch."""
    import numpy as np
    import ray.data
    import torch

    from workloads.checkpoint import InputSpec
    from workloads.worker import Collate, EpochData

    rows = [{"x": [float(i), 1.0], "y": i % 3} for i in range(500)]
    schema = InputSpec(
        kind="tabular", shape=(2,), dtype="float32", class_names=("a", "b", "c"),
        feature_columns=("x",), label_column="y",
    )  # fmt: skip
    shard = CountingShard(ray.data.from_items(rows, override_num_blocks=5).iterator())
    data = EpochData(shard, Collate(schema), cache_bytes=cache_bytes, device=torch.device("cpu"),
                     batch_size=32, chunked=True)  # fmt: skip
    orders = []
    for epoch in (1, 2, 3):
        batches = list(data.batches(shuffle_seed=epoch))
        assert all(len(labels) <= 32 for _, labels in batches)
        features = torch.cat([f for f, _ in batches]).numpy()
        labels = torch.cat([y for _, y in batches]).numpy()
        assert sorted(features[:, 0].astype(int).tolist()) == list(range(500))
        assert (labels == features[:, 0].astype(int) % 3).all()  # rows stay whole
        orders.append(features[:, 0])
    assert not np.array_equal(orders[1], orders[2])
    assert shard.epochs == streamed


def test_fsdp_trains_like_ddp_and_its_gathered_checkpoint_serves(
    ray_session, local_storage, tmp_path
):
    from serve.predictor import Predictor
    from workloads.checkpoint import InputSpec
    from workloads.data import read_split

    ddp = run_training(load_job_config("debug", ["name=ddp"]), local_storage, verbose=False)
    sharded = load_job_config("debug", ["name=fsdp", "train.strategy=fsdp"])
    fsdp = run_training(sharded, local_storage, verbose=False)
    assert fsdp.metrics["val_accuracy"] >= 0.8
    assert abs(fsdp.metrics["val_accuracy"] - ddp.metrics["val_accuracy"]) <= 0.05

    # One whole model.safetensors, gathered from the shards: serving it reproduces the
    # accuracy the sharded model measured in training.
    directory = local_storage.download_dir(fsdp.best_checkpoint_key, tmp_path / "fsdp")
    predictor = Predictor.from_checkpoint(
        directory, name="fsdp", version=1, policy=CodePolicy.for_loading()
    )
    meta = local_storage.read_json(f"{fsdp.best_checkpoint_key}/meta.json")
    rows, labels = read_split(
        meta["data_uri"], InputSpec.from_dict(meta["input"]), validation_fraction=0.2,
        split="validation",
    )  # fmt: skip
    predicted = predictor.predict(rows).labels
    accuracy = sum(p == str(y) for p, y in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy == pytest.approx(fsdp.metrics["val_accuracy"])

    # Resuming a sharded run after a worker is killed: test_a_killed_worker_... [fsdp].


# ---------------------------------------------------------------------- derived versions


def epochs_to(target: float, history: list[dict]) -> int:
    reached = [m["epoch"] for m in history if m["val_accuracy"] >= target]
    return min(reached) if reached else len(history) + 1


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory) -> Storage:
    """Local storage holding `digit:1` (which digit an image shows, 6 epochs) and the digits
    Parquet labelled by digit and by parity."""
    from bench.optimize_train import WIDE, digits_task
    from workloads.train import register_run

    storage = Storage(str(tmp_path_factory.mktemp("pretrained")))
    digits_task(storage, "parity", modulo=2)
    path = f"data.path={digits_task(storage, 'digit')}"
    config = load_job_config("debug", [*WIDE, path, "name=digit", "train.epochs=6"])
    register_run(storage, run_training(config, storage, verbose=False), "digit", None)
    return storage


def test_fine_tuning_from_a_registered_version_reaches_the_target_in_fewer_epochs(
    pretrained, tmp_path
):
    """Pretrained on which digit an image shows, fine-tuned on its parity (a new 2-class
    head): it reaches the target accuracy in fewer epochs than the same model from scratch,
    and its registered version names its parent."""
    from ray import cloudpickle

    from bench.optimize_train import TARGET, WIDE
    from workloads.checkpoint import open_registry
    from workloads.train import register_run

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = [*WIDE, f"data.path={pretrained.uri_for('tasks/parity')}", "train.epochs=3"]
    histories = {}
    for name, extra in [("scratch", []), ("tuned", ["train.init_from=digit:1"])]:
        log = MetricsLog(tmp_path / f"{name}.jsonl")
        config = load_job_config("debug", [*task, f"name={name}", *extra])
        summary = run_training(config, pretrained, callbacks=[log], verbose=False)
        histories[name] = [json.loads(line) for line in Path(log.path).read_text().splitlines()]

    print({name: [round(m["val_accuracy"], 3) for m in h] for name, h in histories.items()})
    assert epochs_to(TARGET, histories["tuned"]) < epochs_to(TARGET, histories["scratch"])
    record = register_run(pretrained, summary, "parity", None)
    lineage = open_registry(pretrained).describe("parity", record["version"])["lineage"]
    assert lineage["parent"] == "digit:1" and lineage["method"] == "finetune"
    assert lineage["settings"]["reinit"] == ["net.7.weight", "net.7.bias"]


def test_distill_and_structured_prune_register_smaller_versions_with_their_parent(pretrained):
    """A student with under 1/4 of the teacher's parameters distilled from it, and the
    teacher pruned to half its neurons: both registered, rebuilt from their meta.json alone,
    with the teacher as parent, and accurate."""
    from workloads import optimize
    from workloads.checkpoint import open_registry
    from workloads.evaluate import load_versions
    from workloads.models import count_parameters

    data = [
        "--set",
        "data.dataset=parquet",
        "--set",
        f"data.path={pretrained.uri_for('tasks/digit')}",
    ]
    storage = ["--storage", pretrained.uri]
    student = ["--set", "model.hidden_sizes=[128]", "--set", "train.lr=0.01", "--epochs", "10"]
    optimize.main(["distill", "--teacher", "digit:1", "--config", "debug", *data, *student,
                   "--temperature", "4", "--alpha", "0.7", "--register", "student", *storage])  # fmt: skip
    optimize.main(["prune", "--model", "digit:1", "--sparsity", "0.5", "--structured",
                   "--epochs", "2", "--register", "pruned", *storage])  # fmt: skip

    registry = open_registry(pretrained)
    wide, student, pruned = load_versions(registry, [("digit", 1), ("student", 1), ("pruned", 1)])
    size = {m.name: count_parameters(m.module) for m in (wide, student, pruned)}
    assert size["student:1"] <= size["digit:1"] / 4
    assert pruned.meta["model"]["kwargs"]["hidden_sizes"] == [128, 64]
    assert size["pruned:1"] < size["digit:1"] / 2
    for name, method in [("student", "distill"), ("pruned", "prune")]:
        lineage = registry.describe(name, 1)["lineage"]
        assert lineage["parent"] == "digit:1" and lineage["method"] == method
    accuracy = {m.name: m.meta["metrics"]["val_accuracy"] for m in (wide, student, pruned)}
    print(size, accuracy)
    assert accuracy["student:1"] >= 0.97 * accuracy["digit:1"]  # the target
    assert accuracy["pruned:1"] >= accuracy["digit:1"] - 0.02

"""A run's record in local storage (workloads/runs.py): which checkpoint a restart resumes
from, what is pruned, and that a checkpoint is only ever visible whole."""

from __future__ import annotations

import pytest
import torch

from workloads.checkpoint import delete_checkpoint, meta_key, save_checkpoint, upload_checkpoint
from workloads.runs import (
    checkpoint_key,
    prune,
    ranked,
    record_attempt,
    resume_point,
    stored_checkpoints,
)

RUN = "runs/demo"


def store(storage, tmp_path, epoch: int, accuracy: float, *, whole: bool = True) -> str:
    """A small checkpoint of `epoch` in storage; `whole=False` leaves it as a cut-short upload
    leaves it: every file but the meta."""
    directory = tmp_path / f"local-{epoch}"
    save_checkpoint(
        directory, model=torch.nn.Linear(2, 2), meta={"metrics": {"val_accuracy": accuracy}}
    )
    key = checkpoint_key(RUN, epoch)
    upload_checkpoint(storage, directory, key)
    if not whole:
        storage.delete(meta_key(key))
    return key


def test_a_restart_resumes_from_the_newest_whole_checkpoint_and_removes_cut_short_ones(
    local_storage, tmp_path
):
    for epoch in (1, 2):
        store(local_storage, tmp_path, epoch, 0.5)
    cut_short = store(local_storage, tmp_path, 3, 0.9, whole=False)
    said = []

    found = resume_point(local_storage, RUN, say=said.append)

    assert found.epoch == 2 and found.complete
    assert [c.epoch for c in stored_checkpoints(local_storage, RUN)] == [1, 2]
    assert local_storage.list(cut_short) == []
    assert said == [f"removed {local_storage.uri_for(cut_short)}: an incomplete checkpoint"]


def test_a_run_without_checkpoints_starts_from_scratch(local_storage):
    assert resume_point(local_storage, RUN) is None


@pytest.mark.parametrize(
    "accuracies, kept",
    [
        ([0.5, 0.9, 0.7, 0.6], [2, 3, 4]),  # the best two and the newest
        ([0.5, 0.6, 0.9, 0.95], [3, 4]),  # the newest is among the best
        ([0.5, float("nan"), 0.6], [1, 3]),  # a metric that is not a number ranks last
    ],
)
def test_pruning_keeps_the_best_k_and_the_newest(local_storage, tmp_path, accuracies, kept):
    for epoch, accuracy in enumerate(accuracies, 1):
        store(local_storage, tmp_path, epoch, accuracy)
    prune(local_storage, RUN, keep=2, metric="val_accuracy", mode="max")
    assert [c.epoch for c in stored_checkpoints(local_storage, RUN)] == kept


def test_pruning_after_each_upload_with_known_metas_keeps_the_same_checkpoints(
    local_storage, tmp_path
):
    # What the worker's uploads do (workloads/recovery.py: Uploads): prune after every
    # checkpoint, with the metas already read or written kept, instead of reading them again.
    metas = {}
    for epoch, accuracy in enumerate([0.5, 0.9, 0.7, 0.6, float("nan")], 1):
        store(local_storage, tmp_path, epoch, accuracy)
        prune(local_storage, RUN, keep=2, metric="val_accuracy", mode="max", metas=metas)
    kept = [c.epoch for c in stored_checkpoints(local_storage, RUN)]
    assert kept == [2, 3, 5]
    assert sorted(metas) == [checkpoint_key(RUN, epoch) for epoch in kept]


def test_ranking_reads_the_metric_and_honours_the_mode(local_storage, tmp_path):
    for epoch, loss in enumerate([0.3, 0.1, 0.2], 1):
        store(local_storage, tmp_path, epoch, loss)
    best_low = ranked(local_storage, RUN, metric="val_accuracy", mode="min")
    best_high = ranked(local_storage, RUN, metric="val_accuracy", mode="max")
    assert [c.epoch for c, _ in best_low] == [2, 3, 1]
    assert [c.epoch for c, _ in best_high] == [1, 3, 2]
    assert best_high[0][1]["metrics"] == {"val_accuracy": 0.3}


def test_a_deleted_checkpoint_loses_its_meta_first_and_then_everything(local_storage, tmp_path):
    key = store(local_storage, tmp_path, 1, 0.5)
    delete_checkpoint(local_storage, key)
    assert local_storage.list(key) == [] and resume_point(local_storage, RUN) is None


def test_attempts_count_the_restarts_of_one_launch(local_storage):
    assert record_attempt(local_storage, RUN, {"launch": "a", "start_epoch": 0}) == 0
    assert record_attempt(local_storage, RUN, {"launch": "a", "start_epoch": 2}) == 1
    assert record_attempt(local_storage, RUN, {"launch": "b", "start_epoch": 3}) == 0
    starts = [
        local_storage.read_json(k)["start_epoch"] for k in local_storage.list(f"{RUN}/attempts")
    ]
    assert starts == [0, 2, 3]  # file names sort by time


@pytest.mark.parametrize("background", [False, True])
def test_uploads_are_whole_once_finished_and_leave_no_local_copy(local_storage, background):
    import glob
    import tempfile
    from types import SimpleNamespace

    from workloads.recovery import Uploads

    def leftovers() -> set[str]:
        return set(glob.glob(f"{tempfile.gettempdir()}/raylane-ckpt-*"))

    train = SimpleNamespace(keep_checkpoints=1, metric="val_accuracy", mode="max")
    loop = SimpleNamespace(
        storage_uri=local_storage.uri, run_key=RUN, job=SimpleNamespace(train=train)
    )
    uploads, before = Uploads(loop, background=background), leftovers()
    for epoch, accuracy in ((1, 0.9), (2, 0.5), (3, 0.7)):

        def write(directory, accuracy=accuracy):
            meta = {"metrics": {"val_accuracy": accuracy}}
            save_checkpoint(directory, model=torch.nn.Linear(2, 2), meta=meta)

        path = uploads.put(epoch, write)
        assert path == local_storage.arrow_path(checkpoint_key(RUN, epoch))
    uploads.finish()

    stored = stored_checkpoints(local_storage, RUN)
    assert [(c.epoch, c.complete) for c in stored] == [(1, True), (3, True)]  # best and newest
    assert leftovers() <= before

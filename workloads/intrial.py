"""One worker's training inside the calling process: a sweep trial that needs no Ray Train.

    raylane sweep --config digits-sweep --set trial_mode=in_trial   # tune/sweep.py calls:
    prepared = hold_in_memory(prepare_data(config, storage), limit_mb=config.train.cache_shard_mb)
    run_training(config, storage, prepared=prepared, report=ray.tune.report)  # workloads/train.py

A one-worker sweep trial used to spend ~94% of its time starting things: a Train controller and
a worker process, the train context, DDP, Ray Data's split coordinator and first batch (33.6 s
of which 2.0 s computing, docs/architecture.md). Here the trial's own process runs the very
same epoch loop (`workloads.worker.train_epochs`): no DDP wrapper (one rank), no Ray Data when
the splits are held in memory as tensors (read and normalized once by the sweep driver, handed
to every trial), and each epoch's metrics go to `report` (`ray.tune.report`). Checkpoints,
their pruning, the attempts record and the resume from storage are the worker's own code, so a
trial's run record (workloads/runs.py) is the same as under Ray Train.

What it gives up: Ray Train's restart of a dead worker (train.max_failures). A trial that fails
is Tune's to retry (FailureConfig max_failures), resuming from its newest checkpoint in storage.
"""

from __future__ import annotations

import torch

from cluster.errors import StorageError
from workloads.recovery import StorageFailed
from workloads.worker import Collate, LoopConfig, Placement, train_epochs

BATCH_ROWS = 4096  # rows per Ray Data batch while a split is read into memory


def train_in_process(loop: LoopConfig, prepared, report) -> None:
    """Train `loop` here, reporting each epoch with `report(metrics)`. `prepared` holds Ray
    Datasets (streamed, then kept if they fit, as a worker does) or tensors (hold_in_memory)."""
    train = loop.job.train
    prepared = hold_in_memory(prepared, limit_mb=train.cache_shard_mb)
    device = torch.device("cuda" if train.use_gpu else "cpu")
    placement = Placement(
        rank=0,
        device=device,
        wrap=lambda model, dtype: model.to(device),  # one rank: nothing to distribute
        train_source=prepared.train,
        validation_source=prepared.validation,
        send=report,
    )
    try:
        train_epochs(loop, placement)
    except StorageFailed as failure:  # Tune shows the trial's error: one line that says why
        raise StorageError(
            f"training run {loop.job.name!r} stopped: {failure}. Once storage answers again, "
            "resume the sweep (--resume) to continue from the newest complete checkpoint"
        ) from None


def hold_in_memory(prepared, *, limit_mb: float):
    """`prepared` with both splits read into (features, labels) tensors, normalized as its
    InputSpec says, when together they fit in `limit_mb`; otherwise `prepared` unchanged."""
    from workloads.train import PreparedData

    if isinstance(prepared.train, tuple):
        return prepared
    collate, limit = Collate(prepared.info.input_spec()), int(limit_mb * 2**20)
    splits = []
    for dataset in (prepared.train, prepared.validation):
        split = read_whole(dataset, collate, limit - sum(tensor_bytes(s) for s in splits))
        if split is None:
            return prepared
        splits.append(split)
    return PreparedData(prepared.info, *splits)


def read_whole(dataset, collate: Collate, limit: int):
    """(features, labels) of the whole dataset, or None once it passes `limit` bytes."""
    parts, size = [], 0
    for batch in dataset.iter_batches(batch_size=BATCH_ROWS, batch_format="numpy"):
        features, labels = collate(batch)
        size += features.nbytes + labels.nbytes
        if size > limit:
            return None
        parts.append((features, labels))
    if not parts:
        return None
    return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


def tensor_bytes(split: tuple[torch.Tensor, torch.Tensor]) -> int:
    return sum(tensor.nbytes for tensor in split)

"""A training run's record in storage: its checkpoints, its attempts, why its workers restarted.

    found = resume_point(storage, "runs/digits-cnn", say=print)   # newest whole checkpoint
    check_resumable(meta, data_fingerprint=..., data_uri=..., spec=..., run_uri=...)
    prune(storage, "runs/digits-cnn", keep=2, metric="val_accuracy", mode="max")
    best, meta = ranked(storage, "runs/digits-cnn", metric="val_accuracy", mode="max")[0]

Layout below `<storage>/<run key>/` (`runs/<name>`, or `sweeps/<sweep>/trials/<trial>`):

    checkpoint-epoch-NNNN/      a checkpoint (workloads/checkpoint.py), whole once its meta is up
    attempts/<time>-<pid>.json  one per start of the worker group: start epoch, nodes, launch
    failures/<time>-<pid>.json  why a launch's workers were restarted (the Train controller)
    summary.json                the finished run (workloads/train.py)

Storage is the record of a run, not Ray Train's checkpoint manager. That manager keeps its own
snapshot of the checkpoints, written by the Train controller after a worker's upload: a worker
killed, or storage lost, between the two left whole checkpoints it never knew (a restart redid
two uploaded epochs; a rerun resumed from epoch 4 with epoch 5 whole in storage), and its
failed snapshot write put controller tracebacks on the console. So rank 0 uploads, finds and
prunes checkpoints here (workloads/worker.py), and Ray Train is handed only metrics.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from cluster.errors import ConfigError
from cluster.storage import Storage
from workloads.checkpoint import delete_checkpoint, meta_key

CHECKPOINT_DIR = "checkpoint-epoch-"


@dataclass(frozen=True, order=True)
class StoredCheckpoint:
    epoch: int
    key: str
    complete: bool  # its meta file is there: every other file was uploaded before it


def checkpoint_key(run_key: str, epoch: int) -> str:
    return f"{run_key}/{CHECKPOINT_DIR}{epoch:04d}"


def stored_checkpoints(storage: Storage, run_key: str) -> list[StoredCheckpoint]:
    """The run's checkpoint directories, whole or not, oldest first (one listing)."""
    keys = set(storage.list(run_key))
    names = {key[len(run_key) + 1 :].split("/", 1)[0] for key in keys}
    found = []
    for name in names:
        epoch = name.removeprefix(CHECKPOINT_DIR)
        if name.startswith(CHECKPOINT_DIR) and epoch.isdigit():
            key = f"{run_key}/{name}"
            found.append(StoredCheckpoint(int(epoch), key, meta_key(key) in keys))
    return sorted(found)


def resume_point(storage: Storage, run_key: str, *, say=None) -> StoredCheckpoint | None:
    """Where a (re)started run continues: its newest complete checkpoint, or None.

    Incomplete ones (an upload cut short by a kill or by lost storage) are deleted on the way,
    named through `say`: nothing would ever complete them, and nothing may read them.
    """
    found = stored_checkpoints(storage, run_key)
    for checkpoint in found:
        if not checkpoint.complete:
            storage.delete(checkpoint.key)
            if say:
                say(f"removed {storage.uri_for(checkpoint.key)}: an incomplete checkpoint")
    complete = [checkpoint for checkpoint in found if checkpoint.complete]
    return complete[-1] if complete else None


def ranked(storage: Storage, run_key: str, *, metric: str, mode: str, metas: dict | None = None):
    """[(checkpoint, meta)] of the run's complete checkpoints, best `metric` first (ties: newer
    first); a checkpoint without a number for the metric ranks last. `metas` (checkpoint key ->
    meta) caches what is known and is filled with what had to be read: a whole checkpoint's
    meta never changes, and reading each one again per epoch was half a small model's
    checkpoint cost (three GETs of ~10 ms after each upload, docs/performance.md)."""

    def score(item) -> tuple[float, int]:
        value = item[1].get("metrics", {}).get(metric)
        if not isinstance(value, int | float) or math.isnan(value):
            return -math.inf, item[0].epoch
        return (value if mode == "max" else -value), item[0].epoch

    metas = {} if metas is None else metas
    complete = [c for c in stored_checkpoints(storage, run_key) if c.complete]
    for checkpoint in complete:
        if checkpoint.key not in metas:
            metas[checkpoint.key] = storage.read_json(meta_key(checkpoint.key))
    return sorted(((c, metas[c.key]) for c in complete), key=score, reverse=True)


def prune(storage: Storage, run_key: str, *, keep: int, metric: str, mode: str,
          metas: dict | None = None) -> None:  # fmt: skip
    """Keep the `keep` best complete checkpoints and the newest one; delete the others.
    `metas` is ranked's cache."""
    order = ranked(storage, run_key, metric=metric, mode=mode, metas=metas)
    newest = max((checkpoint.epoch for checkpoint, _ in order), default=None)
    for position, (checkpoint, _) in enumerate(order):
        if position >= keep and checkpoint.epoch != newest:
            delete_checkpoint(storage, checkpoint.key)
            if metas is not None:
                metas.pop(checkpoint.key, None)


def check_resumable(
    meta: dict, *, data_fingerprint: str, data_uri: str, spec: dict, run_uri: str
) -> None:
    """Refuse to continue a run from a checkpoint of other data or of another architecture:
    its weights would not fit, or would silently mix two runs."""
    fresh = f"choose a new run name (--name / name=) or delete {run_uri} to start over"
    stored = meta.get("data_fingerprint")
    if stored and stored != data_fingerprint:
        raise ConfigError(
            f"run {run_uri} holds checkpoints of other data ({meta.get('data_uri')}, fingerprint "
            f"{stored}; this config reads {data_uri}, fingerprint {data_fingerprint}): {fresh}"
        )
    old, new = _architecture(meta.get("model") or {}), _architecture(spec)
    differs = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if meta.get("model") and differs:
        what = ", ".join(f"{key} {old.get(key)} -> {new.get(key)}" for key in differs)
        raise ConfigError(f"run {run_uri} holds checkpoints of another model ({what}): {fresh}")


def _architecture(spec: dict) -> dict:
    """What decides the weights' names and shapes: the spec without dropout, as JSON has it."""
    plain = json.loads(json.dumps(spec))
    kwargs = {k: v for k, v in (plain.get("kwargs") or {}).items() if k != "dropout"}
    return {"family": plain.get("family"), "class": plain.get("class"), **kwargs}


# ---------------------------------------------------------------------- attempts and failures


def _stamp() -> str:
    """A file name that sorts by time, unique across processes."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%f}-{os.getpid()}"


def record_attempt(storage: Storage, run_key: str, record: dict) -> int:
    """Write `attempts/<time>-<pid>.json` for this start of the workers; returns how many
    earlier starts the same launch (`record["launch"]`) had: 0 for its first."""
    earlier = [storage.read_json(key) for key in storage.list(f"{run_key}/attempts")]
    storage.write_json(f"{run_key}/attempts/{_stamp()}.json", record)
    return sum(1 for attempt in earlier if attempt.get("launch") == record["launch"])


def record_failure(storage: Storage, run_key: str, *, launch: str, what: str) -> None:
    storage.write_json(f"{run_key}/failures/{_stamp()}.json", {"launch": launch, "what": what})


def last_failure(storage: Storage, run_key: str, launch: str) -> str | None:
    """What the newest failure note of `launch` says, if one was written."""
    for key in reversed(storage.list(f"{run_key}/failures")):
        note = storage.read_json(key)
        if note.get("launch") == launch:
            return note.get("what")
    return None

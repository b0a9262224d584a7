"""How a training run survives faults, on the workers' side of Ray Train (workloads/worker.py).

    with newest_checkpoint(loop, rank=rank) as (epoch, directory): ...   # on every rank
    announce_start(loop, epoch, rank=rank)              # attempts record + one line on a restart
    path = together(lambda: uploads.put(epoch, write) if rank == 0 else None)
    RunConfig(callbacks=[RestartNotes(...)])            # in the Train controller: why it restarted

- Checkpoints: rank 0 uploads each one itself (meta last, workloads/checkpoint.py), before it
  reports the epoch or in a background thread (`Uploads`), prunes the run to the best k, and
  every start of the workers resumes from the newest complete checkpoint in storage
  (workloads/runs.py says why storage, not Ray Train's record). At most the epoch in flight is
  lost (with async uploads, also the one still uploading).
- Storage that stays down past its retries (cluster/storage_s3.py) stops every rank at the same
  point: `together` all-gathers the outcome, every rank raises StorageFailed, and the train
  function returns the message (Result.return_value) for the driver to print as one line. A
  rank that raised instead would have Ray Train restart the workers into the same dead storage,
  with a traceback for each attempt.
- A worker that dies makes Ray Train restart the group (train.max_failures). The controller
  notes who died (`RestartNotes`), and the new rank 0 prints one line: who died, and the epoch
  it resumes from.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor

import ray
import torch.distributed as dist
from ray.train import UserCallback

from cluster.errors import StorageError, first_line
from cluster.storage import Storage
from workloads.checkpoint import read_meta, upload_checkpoint
from workloads.runs import (
    checkpoint_key,
    last_failure,
    prune,
    record_attempt,
    record_failure,
    resume_point,
)


class StorageFailed(Exception):
    """Storage failed on some rank after its retries; every rank raises this at once."""


@functools.lru_cache(maxsize=4)
def storage_at(uri: str) -> Storage:
    """One Storage (one client) per worker process and URI."""
    return Storage(uri)


def gather(value) -> list:
    """`value` from every rank, in rank order (small picklable values only, never weights)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def together(fn):
    """fn() on every rank, then rank 0's result on every rank. If storage failed on any rank,
    every rank raises StorageFailed with that message instead of waiting for the others at
    the next collective."""
    try:
        outcome = (fn(), None)
    except StorageError as error:
        outcome = (None, str(error))
    outcomes = gather(outcome)
    failures = [error for _, error in outcomes if error]
    if failures:
        raise StorageFailed(failures[0])
    return outcomes[0][0]


@contextlib.contextmanager
def newest_checkpoint(loop, *, rank: int):
    """(epoch, local directory) of the run's newest complete checkpoint, downloaded on every rank
    for the duration of the block; (0, None) when the run has none."""
    storage = storage_at(loop.storage_uri)

    def say(line: str) -> None:
        print(f"[{loop.job.name}] {line}", flush=True)

    found = together(lambda: resume_point(storage, loop.run_key, say=say) if rank == 0 else None)
    if found is None:
        yield 0, None
        return
    with tempfile.TemporaryDirectory(prefix="raylane-resume-") as directory:
        together(lambda: storage.download_dir(found.key, directory))
        yield found.epoch, directory


def announce_start(loop, start_epoch: int, *, rank: int) -> None:
    """Record this start of the workers (`<run>/attempts/`) and, on rank 0, say in one line why
    it starts where it does."""
    nodes = gather(ray.get_runtime_context().get_node_id())  # each rank's Ray node, rank order

    def note():
        storage = storage_at(loop.storage_uri)
        failure = last_failure(storage, loop.run_key, loop.launch)
        record = {"start_epoch": start_epoch, "host": socket.gethostname(), "pid": os.getpid(),
                  "nodes": nodes, "launch": loop.launch, "after": failure}  # fmt: skip
        return record_attempt(storage, loop.run_key, record), failure

    restarts, failure = together(lambda: note() if rank == 0 else (0, None))
    if rank != 0 or not (restarts or start_epoch):
        return
    where = f"the checkpoint of epoch {start_epoch}" if start_epoch else "the first epoch"
    line = f"resuming from {where}"
    if restarts:
        limit = loop.job.train.max_failures
        budget = "no limit" if limit < 0 else f"at most {limit}"
        line = f"{failure or 'the training workers failed'}; restart {restarts} ({budget}), {line}"
    print(f"[{loop.job.name}] {line}", flush=True)


class Uploads:
    """Rank 0's checkpoint uploads, at most one at a time. Each checkpoint is written to a
    temporary directory that lives exactly as long as its upload, then uploaded (meta last) and
    the run pruned to its best k: before `put` returns, or with `background`
    (train.checkpoint_upload=async) in a thread while training goes on. A background upload's
    StorageError is raised by the next `put` or by `finish`."""

    def __init__(self, loop, *, background: bool):
        self.loop, self.pending = loop, None
        self.metas: dict = {}  # the run's checkpoint metas known here (runs.ranked's cache)
        self.pool = (
            ThreadPoolExecutor(1, thread_name_prefix="raylane-upload") if background else None
        )

    def put(self, epoch: int, write) -> str:
        """Write the checkpoint of `epoch` with `write(directory)` and upload it. Returns its
        path inside storage's pyarrow filesystem, the form Tune records (tune/report.py)."""
        self.finish()
        directory = tempfile.mkdtemp(prefix="raylane-ckpt-")
        try:
            write(directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        key = checkpoint_key(self.loop.run_key, epoch)
        if self.pool is None:
            self._upload(directory, key)
        else:
            self.pending = self.pool.submit(self._upload, directory, key)
        return storage_at(self.loop.storage_uri).arrow_path(key)

    def finish(self) -> None:
        """Wait for the upload in flight, if any; raises its StorageError."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def _upload(self, directory: str, key: str) -> None:
        storage, train = storage_at(self.loop.storage_uri), self.loop.job.train
        try:
            upload_checkpoint(storage, directory, key)  # returns once every file is up
            self.metas[key] = read_meta(directory)
            prune(storage, self.loop.run_key, keep=train.keep_checkpoints,
                  metric=train.metric, mode=train.mode, metas=self.metas)  # fmt: skip
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def died(worker_errors: dict) -> list[int]:
    """Ranks whose process died (killed, out of memory, node lost) rather than raised."""
    from ray.exceptions import RayActorError

    causes = {rank: getattr(e, "health_check_failure", e) for rank, e in worker_errors.items()}
    return sorted(rank for rank, cause in causes.items() if isinstance(cause, RayActorError))


def describe_failure(worker_errors: dict) -> str:
    """One phrase for what stopped the workers. When one rank dies the others fail on the
    broken collective: the death is the news."""
    dead = died(worker_errors)
    if dead:
        return f"training worker {', '.join(map(str, dead))} died"
    rank = min(worker_errors)
    return f"training worker {rank} failed ({first_line(worker_errors[rank])})"


class RestartNotes(UserCallback):
    """In the Train controller: writes what stopped a launch's workers to `<run>/failures/`,
    for the restarted rank 0's one line. Best effort: storage may be what failed."""

    def __init__(self, storage_uri: str, run_key: str, launch: str):
        self.storage_uri, self.run_key, self.launch = storage_uri, run_key, launch

    def after_exception(self, run_context, worker_exceptions) -> None:
        what = describe_failure(worker_exceptions)
        with contextlib.suppress(StorageError):
            storage = storage_at(self.storage_uri)
            record_failure(storage, self.run_key, launch=self.launch, what=what)

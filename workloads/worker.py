"""The per-worker training loop: the only module that calls `ray.train.*`.

Ray Train runs `train_loop_per_worker` on every worker, with one `LoopConfig`: the typed job
config and the dataset facts, validated once on the driver and handed over as an object. A
one-worker sweep trial runs the same epoch loop (`train_epochs`) in its own process instead
(workloads/intrial.py); a `Placement` holds the few things that differ. Each
epoch a worker trains on its own shard of the training set and rank 0 evaluates the whole
validation set. Every `checkpoint_every` epochs rank 0 writes a checkpoint (the contract in
workloads/checkpoint.py) and uploads it to storage itself, before the epoch is reported or, with
`train.checkpoint_upload=async`, while training goes on; after a worker failure or a re-run
with the same name the loop continues from the newest complete checkpoint in storage.
workloads/recovery.py has the how and the why; a storage failure ends the function on every
rank with its message as the return value, which the driver prints. With tracking on, rank 0
also logs each epoch's metrics to the run's MLflow run (workloads/tracking.py); with it off,
nothing of MLflow is loaded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from workloads import recipe as recipes
from workloads import sharding
from workloads.checkpoint import (
    InputSpec,
    build_meta,
    encode_labels,
    load_train_state,
    load_weights,
    prepare_features,
    save_checkpoint,
    stack_features,
    unwrap,
)
from workloads.config import JobConfig, TrainConfig
from workloads.models import build_model
from workloads.progress import EpochProgress
from workloads.recovery import (
    StorageFailed,
    Uploads,
    announce_start,
    newest_checkpoint,
    together,
)
from workloads.step import classification_metrics, predict_logits, train_step
from workloads.tracking import EpochLogger, TrackedRun
from workloads.trust import CodePolicy


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs, built and validated once by the driver (workloads/train.py).
    Storage travels as its URI; each worker builds its own client."""

    job: JobConfig
    spec: dict  # the model spec (workloads/models.py)
    input_spec: InputSpec
    storage_uri: str
    run_key: str  # <runs prefix>/<run name>
    data_fingerprint: str
    data_uri: str
    launch: str  # one id per run_training call: tells a restart from a re-run (recovery.py)
    tracked_run: TrackedRun | None = None  # the MLflow run rank 0 logs to; None: tracking off
    expected_batches: int | None = None  # a rank's batches per epoch, estimated (progress lines)
    recipe: recipes.Recipe | None = None  # fine-tune, prune or distill (workloads/recipe.py)

    def meta(self, *, epoch: int, metrics: dict) -> dict:
        lineage = {"lineage": self.recipe.lineage} if self.recipe and self.recipe.lineage else {}
        return build_meta(
            spec=self.spec, input_spec=self.input_spec, config=self.job.model_dump(),
            run_name=self.job.name, data_fingerprint=self.data_fingerprint,
            data_uri=self.data_uri, epoch=epoch, metrics=metrics,
        ) | lineage  # fmt: skip


def train_loop_per_worker(train_loop_config: dict) -> dict | None:
    """Train; None when done, or {"storage_error": message} when storage failed for good
    (rank 0's return value reaches the driver as `Result.return_value`)."""
    try:
        run_epochs(train_loop_config["loop"])
    except StorageFailed as failure:
        return {"storage_error": str(failure)}
    return None


@dataclass(frozen=True)
class Placement:
    """What differs between a Ray Train worker and a sweep trial that trains in its own process
    (workloads/intrial.py): the rank, the device, how the model is wrapped, where the two splits
    come from (a Ray Data shard, a Dataset, or (features, labels) tensors held in memory, see
    EpochData) and whom the epoch's metrics go to (`ray.train.report` or `ray.tune.report`)."""

    rank: int
    device: torch.device
    wrap: Callable[[torch.nn.Module, torch.dtype | None], torch.nn.Module]
    train_source: object
    validation_source: object
    send: Callable[[dict], None]


def run_epochs(loop: LoopConfig) -> None:
    """The loop on a Ray Train worker: DDP or FSDP, its Ray Data shard, reports to Ray Train."""
    device = ray.train.torch.get_device()
    placement = Placement(
        rank=ray.train.get_context().get_world_rank(),
        device=device,
        wrap=lambda model, dtype: wrap_model(model, loop.job.train, device=device, dtype=dtype),
        train_source=ray.train.get_dataset_shard("train"),
        validation_source=ray.train.get_dataset_shard("validation"),
        send=ray.train.report,
    )
    train_epochs(loop, placement)


def train_epochs(loop: LoopConfig, placement: Placement) -> None:
    """The epoch loop every way of training shares: restore, train, evaluate, checkpoint, report."""
    job = loop.job
    # Ray Train's worker logging sends the root logger's INFO records to the console: a second
    # copy of every print (its print patch also prints), and a line per report from a Ray
    # module that logs through the root logger. At WARNING each progress line shows once.
    logging.getLogger().setLevel(logging.WARNING)
    # With its structured worker logging off (cluster/runtime.py), LoggingConfig does not reach
    # the workers, and Ray Train logs each failed train function's traceback to the console:
    # the survivors' gloo errors when a peer dies. The driver says what happened in one line,
    # and a bug's traceback still reaches it inside TrainingFailedError (workloads/train.py).
    logging.getLogger("ray.train").setLevel(logging.CRITICAL)
    rank = placement.rank
    torch.manual_seed(job.train.seed)
    # A worker owns a fraction of a core or a few cores: more torch threads than that only
    # fight each other (seen here: a 2-thread worker on a busy 2-core machine ran 25x slower).
    torch.set_num_threads(max(1, int(job.train.cpus_per_worker)))

    device = placement.device
    autocast_dtype, scaler = mixed_precision(job.train, device)
    # The class was named by this job's own config, so CONFIGURED (workloads/trust.py).
    model = build_model(loop.spec, policy=CodePolicy.CONFIGURED)
    hooks = recipes.apply(model, loop.recipe, job.train, storage_uri=loop.storage_uri,
                          input_spec=loop.input_spec, device=device)  # fmt: skip
    model = placement.wrap(model, autocast_dtype)
    optimizer = make_optimizer(model, job.train, pretrained=hooks.pretrained)
    scheduler = make_scheduler(optimizer, job.train)
    start_epoch = restore(loop, model, optimizer, scheduler, scaler, rank=rank)
    announce_start(loop, start_epoch, rank=rank)
    uploads = Uploads(loop, background=job.train.checkpoint_upload == "async")

    collate = Collate(loop.input_spec)
    cache_bytes = int(job.train.cache_shard_mb * 2**20)
    train_data = EpochData(
        placement.train_source, collate, cache_bytes=cache_bytes, device=device,
        batch_size=job.train.batch_size, chunked=True, decide_together=True,
    )  # fmt: skip
    validation_data = EpochData(  # the whole validation set, see evaluate()
        placement.validation_source, collate, cache_bytes=cache_bytes,
        device=device, batch_size=512,
    )  # fmt: skip
    gauges = TrainingGauges(job.name) if rank == 0 else None
    log_epoch = EpochLogger(loop.tracked_run if rank == 0 else None)  # does nothing when off
    every_s = job.train.progress_every_s if rank == 0 else 0  # one rank speaks for all
    progress = EpochProgress(
        job.name, epochs=job.train.epochs, every_s=every_s, expected_batches=loop.expected_batches
    )

    for epoch in range(start_epoch + 1, job.train.epochs + 1):
        started = time.perf_counter()
        model.train()
        losses, samples = [], 0
        progress.start(epoch)
        for features, labels in train_data.batches(shuffle_seed=epoch):
            losses.append(
                train_step(
                    model,
                    features,
                    labels,
                    optimizer,
                    scaler=scaler,
                    autocast_dtype=autocast_dtype,
                    device_type=device.type,
                    loss_fn=hooks.loss_fn,
                )
            )
            hooks.after_step(model)
            samples += labels.shape[0]
            progress.batch_done()
        progress.end()
        train_seconds = time.perf_counter() - started
        scheduler.step()

        throughput = all_reduce_sum(samples, device) / max(train_seconds, 1e-9)
        metrics = {}
        # Only rank 0's metrics reach Ray Train, Tune and the checkpoint; a sharded forward
        # pass is a collective, so under fsdp every rank evaluates alongside it.
        if rank == 0 or job.train.strategy == "fsdp":
            metrics = evaluate(model, validation_data, autocast_dtype, device)
        metrics = metrics if rank == 0 else {}
        metrics |= {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "samples_per_s": throughput,
            "epoch_s": time.perf_counter() - started,
            "lr": scheduler.get_last_lr()[0],
        }
        # Before the report: once Tune has it, ASHA may end this process at any moment.
        log_epoch(metrics, step=epoch)
        report(metrics, loop, model, optimizer, scheduler, scaler, rank, uploads, placement.send)
        if gauges:
            gauges.update(metrics)
    together(lambda: uploads.finish() if rank == 0 else None)  # the last one is whole, or said


# Ray Data costs about 0.3 ms of Python per batch it hands over (slicing blocks, the shuffle
# buffer, collate), whatever the batch size: at the 32-row steps of a small MLP that was a third
# of the step time (bench/train.py). Fetching many batches at once and slicing them with torch
# pays it once per chunk. A chunk stays below CHUNK_BYTES so large inputs (images) do not
# balloon worker memory.
CHUNK_BATCHES, CHUNK_BYTES = 64, 64 * 2**20


class EpochData:
    """(features, labels) batches of a worker's Ray Data shard, epoch after epoch.

    The first epoch streams from Ray Data in chunks of up to CHUNK_BATCHES batches, each chunk
    permuted (seeded per epoch) and sliced with torch. When the shard fits in `cache_bytes`,
    its tensors are kept (in host memory) and later epochs skip Ray Data: the whole shard is
    permuted and sliced, as a hand-written loop over in-memory tensors would. Ray Data starts
    a streaming execution per epoch and, with several workers, a split coordinator that hands
    out blocks: on 2 cores that cost raylane 5-12% against plain DDP (bench/train.py).

    With `decide_together`, all ranks keep their shard or none does (an all-reduce after the
    first epoch): a rank that went back to streaming would wait forever at the split for
    ranks that no longer read it. Each rank keeps the rows it was given in the first epoch.
    """

    def __init__(self, shard, collate, *, cache_bytes: int, device, batch_size: int,
                 chunked: bool = False, decide_together: bool = False):  # fmt: skip
        self.shard, self.collate, self.device = shard, collate, device
        self.cache_bytes, self.batch_size = cache_bytes, batch_size
        self.decide_together = decide_together
        spec = collate.spec
        row_bytes = spec.size * np.dtype(spec.dtype).itemsize
        per_chunk = CHUNK_BYTES // max(row_bytes * batch_size, 1)
        self.batches_per_chunk = max(1, min(CHUNK_BATCHES, per_chunk)) if chunked else 1
        # Tensors handed in whole (a split held in memory, workloads/intrial.py) need no Ray Data.
        self.cached = shard if isinstance(shard, tuple) else None

    def batches(self, shuffle_seed: int | None = None):
        """One epoch of batches; shuffled (seeded) when `shuffle_seed` is given."""
        generator = torch.Generator().manual_seed(shuffle_seed or 0)
        if self.cached is not None:
            features, labels = self.cached
            if shuffle_seed is not None:
                order = torch.randperm(len(labels), generator=generator)
                features, labels = features[order], labels[order]
            yield from self._slices(features, labels)
            return
        kept, kept_bytes = [], 0
        for features, labels in self.shard.iter_torch_batches(
            batch_size=self.batch_size * self.batches_per_chunk, collate_fn=self.collate
        ):
            if kept is not None:
                kept_bytes += features.nbytes + labels.nbytes
                if kept_bytes <= self.cache_bytes:
                    kept.append((features, labels))
                else:
                    kept = None  # too large: stream every epoch
            if shuffle_seed is not None:
                order = torch.randperm(len(labels), generator=generator)
                features, labels = features[order], labels[order]
            yield from self._slices(features, labels)
        self._keep(kept)

    def _slices(self, features: torch.Tensor, labels: torch.Tensor):
        # One split call for all views: per-batch Python slicing was 4% of a small MLP's epoch.
        pairs = zip(features.split(self.batch_size), labels.split(self.batch_size), strict=True)
        if self.device.type == "cpu":
            yield from pairs
            return
        for batch_features, batch_labels in pairs:
            yield (
                batch_features.to(self.device, non_blocking=True),
                batch_labels.to(self.device, non_blocking=True),
            )

    def _keep(self, kept: list | None) -> None:
        fits = kept is not None and len(kept) > 0
        if self.decide_together:
            fits = all_reduce_sum(0 if fits else 1, self.device) == 0
        if fits:
            features, labels = torch.cat([f for f, _ in kept]), torch.cat([y for _, y in kept])
            if self.device.type == "cuda":  # so the per-batch copies can be asynchronous
                features, labels = features.pin_memory(), labels.pin_memory()
            self.cached = (features, labels)


class Collate(NumpyBatchCollateFn):
    """numpy batch from Ray Data -> (features, labels) CPU tensors, normalized as the checkpoint says.

    The same InputSpec drives serving, so a model sees identical inputs in both places.
    """

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]):
        features = prepare_features(stack_features(batch, self.spec.feature_columns), self.spec)
        labels = encode_labels(batch[self.spec.label_column], self.spec)
        return torch.as_tensor(features), torch.as_tensor(labels)


def make_optimizer(
    model: torch.nn.Module, train: TrainConfig, *, pretrained: frozenset[str] = frozenset()
) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) get no weight decay; the `pretrained`
    parameters (loaded by train.init_from) learn at lr * train.pretrained_lr_scale."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in unwrap(model).named_parameters():
        if parameter.requires_grad:
            groups.setdefault((parameter.ndim < 2, name in pretrained), []).append(parameter)
    # Sorted so that a resumed run's optimizer state lines up with the same groups.
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else train.weight_decay,
                "lr": train.lr * (train.pretrained_lr_scale if loaded else 1.0),
            }
            for (no_decay, loaded), params in sorted(groups.items())
        ],
        lr=train.lr,
    )


def make_scheduler(optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch schedule: linear warmup, then cosine decay to 5% (or constant)."""

    def factor(epoch: int) -> float:
        if epoch < train.warmup_epochs:
            return (epoch + 1) / (train.warmup_epochs + 1)
        if train.scheduler == "constant":
            return 1.0
        span = max(train.epochs - train.warmup_epochs, 1)
        progress = min((epoch - train.warmup_epochs) / span, 1.0)
        if train.scheduler == "onecycle":  # triangle: up for the first third, then down
            return min(3 * progress + 0.1, 1.0) if progress < 1 / 3 else 1.5 * (1 - progress) + 0.05
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def mixed_precision(train: TrainConfig, device: torch.device):
    """(autocast dtype or None, GradScaler or None). Mixed precision only on CUDA."""
    precision = train.precision
    if device.type != "cuda" or precision == "fp32":
        return None, None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, None
    if train.strategy == "fsdp":  # the gradient norms for unscaling span every rank's shard
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return torch.float16, ShardedGradScaler("cuda")
    return torch.float16, torch.amp.GradScaler("cuda")  # fp16 needs loss scaling


def wrap_model(model: torch.nn.Module, train: TrainConfig, *, device, dtype) -> torch.nn.Module:
    """The one place a model is made distributed: DDP (a replica per rank, Ray Train's
    prepare_model) or FSDP2 (each rank holds a shard, workloads/sharding.py). `dtype`, the
    mixed-precision dtype or None, is what FSDP computes in; DDP leaves that to autocast."""
    if train.strategy == "fsdp":
        return sharding.shard(model, device=device, param_dtype=dtype)
    return ray.train.torch.prepare_model(model)


def restore(loop: LoopConfig, model, optimizer, scheduler, scaler, *, rank: int) -> int:
    """Load the run's newest complete checkpoint, if any; returns the epochs already done."""
    with newest_checkpoint(loop, rank=rank) as (epoch, directory):
        if directory is None:
            return 0
        weights = load_weights(directory)
        state = load_train_state(directory) or {}
    if loop.job.train.strategy == "fsdp":  # every rank reads the whole state and keeps its shard
        sharding.load_full_state(model, optimizer, weights, state.get("optimizer"))
    else:
        unwrap(model).load_state_dict(weights)
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    return epoch


def evaluate(model, data: EpochData, autocast_dtype, device) -> dict[str, float]:
    """Validation metrics over the whole validation set.

    The validation set is not sharded (an equal split would drop up to world_size-1 rows), and
    the bare module runs the forward pass, so no DDP collective is involved: rank 0 alone can
    evaluate while the other ranks wait at the next report.
    """
    model = unwrap(model).eval()
    logits, labels = [], []
    for features, target in data.batches():
        batch_logits = predict_logits(
            model, features, autocast_dtype=autocast_dtype, device_type=device.type
        )
        logits.append(batch_logits.cpu().numpy())
        labels.append(target.cpu().numpy())
    all_logits, all_labels = np.concatenate(logits), np.concatenate(labels)
    metrics = classification_metrics(all_logits, all_labels, all_logits.shape[1])
    return {f"val_{k}": v for k, v in metrics.items()}


def all_reduce_sum(value: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    tensor = torch.tensor([float(value)], device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def report(metrics, loop: LoopConfig, model, optimizer, scheduler, scaler, rank: int,
           uploads: Uploads, send=ray.train.report) -> None:  # fmt: skip
    """Report metrics every epoch; every `checkpoint_every` epochs (and after the last) rank 0
    first writes a checkpoint and hands it to `uploads`: a sync upload is whole in storage
    before the epoch is reported. Ray Train gets metrics only (workloads/runs.py says why).
    `checkpoint_s`, what this cost the step (bench/checkpoint_cost.py), goes with them."""
    began = time.perf_counter()
    job, epoch = loop.job, metrics["epoch"]
    if epoch % job.train.checkpoint_every == 0 or epoch == job.train.epochs:
        weights, optimizer_state = None, None
        if job.train.strategy == "fsdp":  # a collective: every rank gathers, rank 0 keeps
            weights, optimizer_state = sharding.full_state(model, optimizer)
        elif rank == 0:
            optimizer_state = optimizer.state_dict()

        def write(directory: str) -> None:
            save_checkpoint(
                directory,
                model=model,
                weights=weights,
                meta=loop.meta(epoch=epoch, metrics=metrics),
                train_state={
                    "epoch": epoch,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                },
            )

        path = together(lambda: uploads.put(epoch, write) if rank == 0 else None)
        if rank == 0:
            metrics = {**metrics, "checkpoint_path": path}  # what Tune ranks (tune/report.py)
    send({**metrics, "checkpoint_s": time.perf_counter() - began})
    if rank == 0:
        print(format_progress(job, metrics), flush=True)


def format_progress(job: JobConfig, m: dict) -> str:
    return (
        f"[{job.name}] epoch {m['epoch']}/{job.train.epochs}  train_loss {m['train_loss']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_accuracy']:.4f}  "
        f"f1 {m['val_f1_macro']:.4f}  auc {m['val_auc_roc']:.4f}  "
        f"{m['samples_per_s']:.0f} samples/s  {m['epoch_s']:.1f}s"
    )


class TrainingGauges:
    """Prometheus gauges (through Ray's metrics agent) for the dashboard."""

    def __init__(self, run: str):
        from ray.util.metrics import Gauge

        self.run = run
        self.epoch = Gauge("raylane_train_epoch", "epochs completed", tag_keys=("run",))
        self.loss = Gauge("raylane_train_loss", "loss per split", tag_keys=("run", "split"))
        self.accuracy = Gauge(
            "raylane_train_val_accuracy", "validation accuracy", tag_keys=("run",)
        )
        self.speed = Gauge(
            "raylane_train_samples_per_second", "training throughput", tag_keys=("run",)
        )

    def update(self, m: dict) -> None:
        tags = {"run": self.run}
        self.epoch.set(m["epoch"], tags)
        self.loss.set(m["train_loss"], {**tags, "split": "train"})
        self.loss.set(m["val_loss"], {**tags, "split": "validation"})
        self.accuracy.set(m["val_accuracy"], tags)
        self.speed.set(m["samples_per_s"], tags)

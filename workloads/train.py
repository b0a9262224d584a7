"""The training driver: validate, prepare data, build a TorchTrainer, fit it.

    python -m workloads.train --config digits-cnn --storage s3://raylane --num-workers 2
    raylane train --config tabular-mlp --set train.epochs=20 --set model.dropout=0.2
    raylane train --config tabular-mlp --register tabular --promote production
    ray job submit --working-dir . -- python -m workloads.train --config digits-cnn

Checkpoints go to `<storage>/runs/<name>/checkpoint-epoch-NNNN/` and a summary to
`<storage>/runs/<name>/summary.json` (the layout: workloads/runs.py). The run name (the
config's `name`, or `--name`) is stable: running the same name again resumes from its newest
complete checkpoint, unless that was trained on other data or another model (refused, with how
to start fresh); a run that already finished with the same config returns its stored summary at
once (no data read, no workers). Everything that can be checked is checked before Ray Train
starts a worker: storage, the data (workloads/datacheck.py), the model, the run to resume.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cluster.config import add_common_args
from cluster.errors import ConfigError, RaylaneError, StorageError, first_line, run_cli
from cluster.registry import check_name
from cluster.runtime import use_code
from cluster.storage import Storage
from workloads import data, finetune, runs
from workloads.checkpoint import meta_key
from workloads.config import JobConfig, load_job_config, presets
from workloads.models import build_model, count_parameters, model_spec
from workloads.progress import expected_batches
from workloads.recipe import Recipe, frozen_names
from workloads.tracking import Tracking, add_tracking_args, tracking_from
from workloads.trust import CodePolicy


@dataclass
class TrainingSummary:
    run_name: str
    metrics: dict
    best_checkpoint_key: str | None
    best_checkpoint_uri: str | None
    epochs: int
    seconds: float
    config: dict | None = None  # the JobConfig it ran with: a re-run of the same returns this


def finished_run(config: JobConfig, storage: Storage, runs_prefix: str = "runs"):
    """The stored summary of run `config.name` if it already finished with this very config."""
    key = f"{runs_prefix}/{config.name}/summary.json"
    if not storage.exists(key):
        return None
    stored = storage.read_json(key)
    if stored.get("config") != config.model_dump(mode="json"):
        return None
    return TrainingSummary(**stored)


def run_training(
    config: JobConfig,
    storage: Storage,
    *,
    callbacks: Sequence = (),
    address: str | None = None,
    verbose: bool = True,
    runs_prefix: str = "runs",
    prepared: PreparedData | None = None,
    tracking: Tracking | None = None,
    recipe: Recipe | None = None,
    report=None,
) -> TrainingSummary:
    """Train `config` with Ray Train, checkpoints in `storage` under `<runs_prefix>/<name>/`.

    `prepared` hands in datasets already read and split (a sweep reads them once for all
    trials); with `tracking`, the run is an MLflow run (config as params, metrics per epoch);
    `recipe` starts from stored weights, prunes or distills (workloads/recipe.py; made from
    `train.init_from` when not given). With `report` (a sweep trial's `ray.tune.report`), one
    worker's loop runs in this process on data held in memory, no Ray Train
    (workloads/intrial.py). Raises RaylaneError (one-line cause) on failure.
    """
    from cluster.runtime import connect

    started = time.monotonic()
    storage.check()  # fail fast, before anything is written
    done = finished_run(config, storage, runs_prefix)
    if done is not None:
        if verbose:
            print(f"[{config.name}] already finished with this config; its summary:")
            print(format_summary(done), flush=True)
        return done
    info = prepared.info if prepared else data.resolve(config.data, storage)
    spec = model_spec(
        config.model,
        input_shape=info.feature_shape,
        num_classes=info.num_classes,
        vocab_size=info.vocab_size,
    )
    # Bad model settings fail here, not in workers; the class is the config's own (trusted).
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    parameters = count_parameters(model)
    check_freeze(model, config.train.freeze)
    if recipe is None and config.train.init_from:
        recipe = finetune.plan(config, spec, info.input_spec(), storage, verbose=verbose)
    run_key = f"{runs_prefix}/{config.name}"
    check_resume(config, storage, run_key, info, spec, verbose=verbose)
    tracked = tracking and tracking.start_run(
        config.name,
        params=config.model_dump(mode="json"),
        tags={"raylane.kind": "train", "raylane.run": storage.uri_for(run_key)},
    )
    try:
        connect(address)
        prepared = prepared or prepare_data(config, storage, info)
        if verbose:
            info = prepared.info
            print(
                f"[{config.name}] {config.model.family} ({parameters:,} parameters) on "
                f"{info.uri}: {info.rows} rows, {info.num_classes} classes; "
                f"{config.train.num_workers} workers{' on GPU' if config.train.use_gpu else ''}"
                f"; storage {storage.uri}",
                flush=True,
            )
        loop = loop_config(config, prepared, spec, storage, run_key, tracked, recipe)
        if report is None:
            outcome = fit(build_trainer(config, prepared, loop, storage, callbacks), config)
            outcome = outcome.return_value
        else:
            from workloads.intrial import train_in_process

            outcome = train_in_process(loop, prepared, report)
        stopped = (outcome or {}).get("storage_error")
        if stopped:
            raise StorageError(
                f"training run {config.name!r} stopped: {stopped}. Once storage answers again, "
                "run the same command to resume from the newest complete checkpoint"
            )
    except BaseException:  # FAILED in MLflow, not left RUNNING forever
        if tracked:
            tracked.end("FAILED")
        raise
    summary = summarize(config, storage, run_key, time.monotonic() - started)
    if tracked:
        tracked.set_tags({"raylane.best_checkpoint": summary.best_checkpoint_uri})
        tracked.end()
    storage.write_json(f"{run_key}/summary.json", asdict(summary))
    if verbose:
        print(format_summary(summary), flush=True)
    return summary


def check_resume(config, storage: Storage, run_key: str, info, spec: dict, *, verbose: bool):
    """Before any worker starts: clear incomplete checkpoints, and refuse to resume a run that
    was trained on other data or another model (its weights would not fit)."""
    say = (lambda line: print(f"[{config.name}] {line}", flush=True)) if verbose else None
    found = runs.resume_point(storage, run_key, say=say)
    if found is None:
        return
    runs.check_resumable(
        storage.read_json(meta_key(found.key)),
        data_fingerprint=info.fingerprint,
        data_uri=data.data_uri(config.data, info),
        spec=spec,
        run_uri=storage.uri_for(run_key),
    )


def loop_config(config, prepared, spec, storage: Storage, run_key: str, tracked, recipe=None):
    """The LoopConfig every worker gets: built and validated once, here."""
    from workloads.worker import LoopConfig

    info, launch = prepared.info, uuid.uuid4().hex
    return LoopConfig(
        job=config, spec=spec, input_spec=info.input_spec(), storage_uri=storage.uri,
        run_key=run_key, data_fingerprint=info.fingerprint,
        data_uri=data.data_uri(config.data, info), launch=launch, tracked_run=tracked or None,
        recipe=recipe,
        expected_batches=expected_batches(
            rows=info.rows, validation_fraction=config.data.validation_fraction,
            workers=config.train.num_workers, batch_size=config.train.batch_size,
        ),
    )  # fmt: skip


def build_trainer(config, prepared, loop, storage: Storage, callbacks):
    """The TorchTrainer of a run: one LoopConfig for every worker, no Ray checkpoint record."""
    from ray.train import DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workloads.recovery import RestartNotes
    from workloads.worker import train_loop_per_worker

    run_key, launch = loop.run_key, loop.launch
    fs, root = storage.arrow_filesystem()
    resources = {"CPU": config.train.cpus_per_worker} | ({"GPU": 1} if config.train.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ScalingConfig(
            num_workers=config.train.num_workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.train.placement_strategy,
        ),
        run_config=RunConfig(
            name=config.name,
            storage_path=f"{root}/{run_key.rsplit('/', 1)[0]}",
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            # No CheckpointConfig: the workers keep the checkpoints (workloads/runs.py).
            callbacks=[*callbacks, RestartNotes(storage.uri, run_key, launch)],
            # Ray Train's own lines (a dead worker's ActorDiedError, the collateral errors of
            # the ranks that outlived it) go to Ray's session logs, not the console: raylane
            # says what happened in one line, and a bug's traceback reaches the driver (fit).
            logging_config=LoggingConfig(log_level="CRITICAL"),
        ),
        datasets={"train": prepared.train, "validation": prepared.validation},
        # Shard only the training set; every rank sees the whole validation set (no rows
        # dropped to even out shards), and rank 0 evaluates it.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


@dataclass
class PreparedData:
    """A dataset read, split and measured once: its facts and two Ray Datasets."""

    info: data.DatasetInfo
    train: Any
    validation: Any


def prepare_data(
    config: JobConfig, storage: Storage, info: data.DatasetInfo | None = None
) -> PreparedData:
    """Read and split the configured dataset with Ray Data; normalization (and a text
    column's tokenizer) fitted on the train split."""
    info = info or data.resolve(config.data, storage)
    train, validation = data.load_splits(config.data, info)
    data.fit_tokenizer(train, info)
    normalize = config.data.normalize
    info.normalization = data.check_and_normalize(train, validation, info, normalize=normalize)
    return PreparedData(info, train, validation)


def check_freeze(model, patterns: list[str]) -> None:
    """Every train.freeze pattern names a parameter, and something is left to train."""
    if patterns and len(frozen_names(model, patterns)) == len(list(model.parameters())):
        raise ConfigError("train.freeze matches every parameter: leave some layers to train")


def fit(trainer, config: JobConfig):
    """trainer.fit(). Workers that died more often than train.max_failures, and raylane's own
    user-facing errors raised in a worker, become one line; any other worker failure is a bug
    and keeps the traceback Ray Train puts in its message."""
    from ray.train import TrainingFailedError

    from workloads.recovery import died

    try:
        return trainer.fit()
    except TrainingFailedError as error:
        failures = getattr(error, "worker_failures", None) or {}
        dead = died(failures)
        told = [e for e in failures.values() if isinstance(e, RaylaneError)]
        if told and not dead:
            raise RaylaneError(f"training run {config.name!r} failed: {told[0]}") from None
        if failures and not dead:
            raise
        if not dead:  # the Train controller failed
            raise RaylaneError(
                f"training run {config.name!r} failed: {first_line(error)}"
            ) from None
        raise RaylaneError(
            f"training run {config.name!r} failed: training worker {', '.join(map(str, dead))} "
            f"died, after {config.train.max_failures} restart(s) (train.max_failures); running "
            "the same command again resumes from the newest complete checkpoint"
        ) from None


def summarize(config: JobConfig, storage: Storage, run_key: str, seconds: float):
    """The run's summary from storage: its best complete checkpoint by the configured metric."""
    train = config.train
    order = runs.ranked(storage, run_key, metric=train.metric, mode=train.mode)
    best, meta = order[0] if order else (None, {})
    last = max((checkpoint.epoch for checkpoint, _ in order), default=0)
    return TrainingSummary(
        run_name=config.name,
        metrics=_plain(meta.get("metrics", {})),
        best_checkpoint_key=best.key if best else None,
        best_checkpoint_uri=storage.uri_for(best.key) if best else None,
        epochs=last,
        seconds=round(seconds, 1),
        config=config.model_dump(mode="json"),
    )


def _plain(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, int | float) else v) for k, v in metrics.items()}


def format_summary(summary: TrainingSummary) -> str:
    m = summary.metrics
    lines = [
        f"[{summary.run_name}] finished {summary.epochs} epochs in {summary.seconds:.0f}s",
        "  best checkpoint: " + (summary.best_checkpoint_uri or "(none)"),
    ]
    for key in ("epoch", "val_accuracy", "val_f1_macro", "val_auc_roc", "val_loss"):
        if key in m:
            lines.append(
                f"  {key:<14} {m[key]:.4f}" if key != "epoch" else f"  best epoch     {m[key]:.0f}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane train",
        description="Train a model with Ray Train (DDP over N workers); checkpoints go to storage. "
        "Re-running the same --name resumes from its latest checkpoint.",
    )
    parser.add_argument(
        "--config",
        default="debug",
        help=f"preset ({', '.join(presets())}) or a YAML file (default: debug)",
    )
    add_common_args(parser)
    add_tracking_args(parser)
    parser.add_argument("--name", help="run name (default: the config's name)")
    parser.add_argument("--num-workers", type=int, help="training workers (train.num_workers)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start from a registered version's weights: NAME@ALIAS or NAME:VERSION "
        "(train.init_from; see also train.freeze, train.pretrained_lr_scale)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument(
        "--register", metavar="NAME", help="register the best checkpoint as a version of NAME"
    )
    parser.add_argument(
        "--promote", metavar="ALIAS", help="then point ALIAS (e.g. production) at that version"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> JobConfig:
    overrides = list(args.set)
    if args.name:
        overrides.append(f"name={args.name}")
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("train.use_gpu=true")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    return load_job_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_code(args.working_dir, args.py_modules)  # before the config names a custom class
    if args.promote and not args.register:
        raise ConfigError("--promote needs --register NAME")
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(config.model_dump(), indent=2))
        return 0
    if config.train.use_gpu:
        _require_gpus(config, args.address)
    storage = Storage.from_uri(args.storage)
    if args.register:
        check_name(args.register)  # a bad name fails before training, not after
    tracking = tracking_from(args)
    summary = run_training(config, storage, address=args.address, tracking=tracking)
    if args.register:
        register_run(storage, summary, args.register, args.promote, tracking=tracking)
    return 0


def register_run(
    storage: Storage, summary: TrainingSummary, name: str, alias: str | None, *,
    tracking: Tracking | None = None,
) -> dict:  # fmt: skip
    """Register a finished run's best checkpoint as a new version of `name`, with its report."""
    from workloads.checkpoint import open_registry
    from workloads.registration import register_checkpoint, report_line

    if not summary.best_checkpoint_key:
        raise RaylaneError(f"run {summary.run_name!r} kept no checkpoint to register")
    record = register_checkpoint(
        open_registry(storage),
        name,
        storage,
        summary.best_checkpoint_key,
        lineage={"run": summary.run_name},
        alias=alias,
        tracking=tracking,
    )
    shown = f" (now {name}@{alias})" if alias else ""
    print(f"registered: {name}:{record['version']} from epoch {record['epoch']}{shown}")
    print(report_line(record))
    return record


def _require_gpus(config: JobConfig, address: str | None) -> None:
    from cluster.runtime import cluster_resources, connect

    connect(address)
    gpus = cluster_resources().get("GPU", 0)
    if gpus < 1:
        raise ConfigError("train.use_gpu is set but the Ray cluster has no GPUs; drop --use-gpu")


if __name__ == "__main__":
    run_cli(main)

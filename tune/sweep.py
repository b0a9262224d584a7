"""Hyperparameter sweeps with Ray Tune over the training job; the best trial -> the registry.

    python -m tune.sweep --config digits-sweep --storage s3://raylane --register digits \\
        --promote production
    raylane sweep --config digits-sweep --set num_samples=16 --set scheduler.grace_period=2
    raylane sweep --config digits-sweep --resume        # continue an interrupted sweep

A trial with one worker (`trial_mode` auto or in_trial, tune/config.py) trains inside the Tune
trial itself on data the driver read into memory once (workloads/intrial.py), asks for its
worker's CPUs, and reports with `ray.tune.report`; Tune reuses its process for the next trial.
Otherwise each trial is a function that builds and fits a Ray Train `TorchTrainer` (Ray 2.60's
Train V2 cannot be handed to a Tuner directly) and reports through `TuneReportCallback`; such a
trial asks for almost no CPU itself, its Train workers for fractions. Either way
`max_concurrent_trials` is derived from what the cluster has, so a small machine never
deadlocks.

Sweep state lives in `<storage>/sweeps/<name>/` (Tune's experiment state plus each trial's
Train run under `trials/`), so `--resume` restores from storage on any machine. At the end the
summary table, `summary.json`, a plot of each trial's metric per epoch and one of each
hyperparameter against the final metric are written there. `--register` evaluates the best
checkpoint and registers it with its report (workloads/evaluate.py).

With tracking on (`--tracking-uri` or $MLFLOW_TRACKING_URI), the sweep is an MLflow run with
one nested run per trial, each marked at the end with its final state and whether ASHA stopped
it early, and the registration is a nested run of its own (workloads/tracking.py).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.config import add_common_args, validate
from cluster.errors import ConfigError, RaylaneError, first_line, run_cli
from cluster.runtime import use_code
from cluster.storage import Storage
from tune.config import SweepConfig, load_sweep_config, resolve_trial_mode, sweep_presets
from tune.report import plot_params, plot_trials, summary_rows, write_summary
from tune.space import base_training_config, trial_config, tune_space
from workloads.checkpoint import open_registry
from workloads.config import JobConfig
from workloads.registration import register_checkpoint
from workloads.tracking import TrackedRun, Tracking, add_tracking_args, tracking_from
from workloads.train import prepare_data

TRIAL_DRIVER_CPUS = 0.01  # the trial function only waits on its Train controller
# Left free beside the trials' workers. Ray Data iterating prepared datasets needs little;
# reading Parquet inside trials runs tasks that ask for a whole CPU (Ray 2.60), so a sweep
# over data.* fields, where every trial reads its own data, keeps a whole CPU free.
SHARED_DATA_RESERVE_CPUS = 0.5
OWN_DATA_RESERVE_CPUS = 1.0


@dataclass
class SweepResult:
    name: str
    best: dict  # {"trial", "metric", "config", "checkpoint_key", "epoch"}
    rows: list[dict]
    errors: list[str]
    plot_uri: str | None
    registered: dict | None = None  # {"name", "version", "alias", "report_uri", "metrics"}
    params_plot_uri: str | None = None


def run_trial(
    params: dict, *, base: dict, storage_uri: str, sweep_name: str, prepared=None, tracking=None,
    in_trial: bool = False,
) -> None:  # fmt: skip
    """One Tune trial: a complete training run of the sampled config, in this process
    (`in_trial`) or by Ray Train (an MLflow run nested under the sweep's when `tracking` is
    set)."""
    from ray import tune as ray_tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from workloads.recovery import storage_at
    from workloads.train import run_training

    trial_id = ray_tune.get_context().get_trial_id()
    data = trial_config(base, params, name=f"trial-{trial_id}")
    config = validate(JobConfig, data, source=f"trial {trial_id} config {params}")
    # The process's one client, which its checkpoint uploads use too: a reused trial process
    # built a boto3 client per trial (60-140 ms each here) and opened new connections.
    storage, runs = storage_at(storage_uri), f"sweeps/{sweep_name}/trials"
    if storage.exists(f"{runs}/{config.name}/summary.json"):
        # Finished before the sweep was interrupted, but Tune had not saved that yet: hand
        # Tune the stored result instead of starting the run again.
        summary = storage.read_json(f"{runs}/{config.name}/summary.json")
        checkpoint = storage.arrow_path(summary["best_checkpoint_key"])
        ray_tune.report({**summary["metrics"], "checkpoint_path": checkpoint})
        return
    summary = run_training(
        config,
        storage,
        report=ray_tune.report if in_trial else None,
        callbacks=[] if in_trial else [TuneReportCallback()],
        verbose=False,
        runs_prefix=runs,
        prepared=prepared,
        tracking=tracking and tracking.tagged(**{"raylane.trial": trial_id}),
    )
    attempts = storage.list(f"{runs}/{config.name}/attempts")
    if attempts and storage.read_json(attempts[-1])["start_epoch"] >= config.train.epochs:
        # A restored trial whose Train run had already finished trains and reports nothing;
        # hand Tune the run's result so the trial completes with its metric and checkpoint.
        checkpoint = storage.arrow_path(summary.best_checkpoint_key)
        ray_tune.report({**summary.metrics, "checkpoint_path": checkpoint})


def trial_resources(train: dict, *, in_trial: bool) -> dict:
    """What a trial's own process asks for: its worker's share when it trains itself, else
    next to nothing (its Train workers ask for theirs)."""
    if not in_trial:
        return {"cpu": TRIAL_DRIVER_CPUS}
    return {"cpu": train["cpus_per_worker"]} | ({"gpu": 1} if train["use_gpu"] else {})


def concurrency(train: dict, requested: int | None, *, shared_data: bool, in_trial: bool) -> int:
    """How many trials fit side by side without starving their workers or Ray Data."""
    from cluster.runtime import cluster_resources

    resources = cluster_resources()
    workers = train["num_workers"]
    per_trial_cpus = workers * train["cpus_per_worker"] + (0 if in_trial else TRIAL_DRIVER_CPUS)
    reserve = SHARED_DATA_RESERVE_CPUS if shared_data else OWN_DATA_RESERVE_CPUS
    fits = math.floor((resources.get("CPU", 1) - reserve) / per_trial_cpus)
    if train["use_gpu"]:
        fits = min(fits, int(resources.get("GPU", 0) // workers))
    if fits < 1:
        raise ConfigError(
            f"one trial needs {per_trial_cpus:.2f} CPUs"
            + (f" and {workers} GPUs" if train["use_gpu"] else "")
            + f" plus {reserve} for data, but the cluster has {resources.get('CPU', 0)} "
            "CPUs: lower train.num_workers or train.cpus_per_worker"
        )
    return min(fits, requested) if requested else fits


def build_tuner(
    sweep: SweepConfig, storage: Storage, *, resume: bool, tracking=None, live_table: bool = True,
    callbacks: Sequence = (),
):  # fmt: skip
    """The Tuner of `sweep` (restored from storage with `resume`); `callbacks` are Tune
    callbacks in the driver (bench/sweep_timing.py times each report with one)."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    base = base_training_config(sweep)
    in_trial = resolve_trial_mode(sweep, base["train"]) == "in_trial"
    # Read and split the data once for every trial, unless the sweep varies the data itself;
    # trials that train themselves get it as tensors when it fits (no Ray Data in the trials).
    shared_data = not any(key.startswith("data.") for key in sweep.space)
    prepared = prepare_data(JobConfig.model_validate(base), storage) if shared_data else None
    if prepared and in_trial:
        from workloads.intrial import hold_in_memory  # torch and Ray Train: only when used

        prepared = hold_in_memory(prepared, limit_mb=base["train"]["cache_shard_mb"])
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(
            run_trial,
            base=base,
            storage_uri=storage.uri,
            sweep_name=sweep.name,
            prepared=prepared,
            tracking=tracking,
            in_trial=in_trial,
        ),
        trial_resources(base["train"], in_trial=in_trial),
    )
    fs, root = storage.arrow_filesystem()
    path = f"{root}/sweeps/{sweep.name}"
    if resume:
        if not ray_tune.Tuner.can_restore(path, storage_filesystem=fs):
            raise ConfigError(
                f"no sweep {sweep.name!r} to resume in {storage.uri_for('sweeps')}; "
                "run it without --resume first"
            )
        print(f"[{sweep.name}] resuming from {storage.uri_for(f'sweeps/{sweep.name}')}")
        return ray_tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)

    epochs = base["train"]["epochs"]
    max_concurrent = concurrency(
        base["train"], sweep.max_concurrent_trials, shared_data=shared_data, in_trial=in_trial
    )
    scheduler = (
        ASHAScheduler(
            metric=sweep.metric,
            mode=sweep.mode,
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=min(sweep.scheduler.grace_period, epochs),
            reduction_factor=sweep.scheduler.reduction_factor,
        )
        if sweep.scheduler.asha
        else FIFOScheduler()
    )
    return ray_tune.Tuner(
        trainable,
        param_space=tune_space(sweep.space),
        # The metric goes to the scheduler and the search only: Tune's live table would otherwise
        # name a "current best trial" by its last epoch with ties to the first trial, which can
        # disagree with the checkpoint this sweep registers (tune/report.py: rank_key).
        tune_config=ray_tune.TuneConfig(
            num_samples=sweep.num_samples,
            scheduler=scheduler,
            search_alg=search_algorithm(sweep, max_concurrent),
            # Random search carries its own limit (see search_algorithm).
            max_concurrent_trials=None if sweep.search == "random" else max_concurrent,
            # Saves a process start per trial. Safe for trials that train themselves: Tune
            # reuses a process only once the stopped trial's function has returned (it ends at
            # its next report; FunctionTrainable.reset_config). A trial in a TorchTrainer owns
            # a Train controller beside it, which is no process to hand to the next trial.
            reuse_actors=in_trial,
        ),
        run_config=ray_tune.RunConfig(
            name=sweep.name,
            storage_path=f"{root}/sweeps",
            storage_filesystem=fs,
            failure_config=ray_tune.FailureConfig(max_failures=0),
            callbacks=list(callbacks),
            # The live status table (and Tune's boxes per trial), or nothing: the epoch lines
            # and the summary below say it all too (the pipeline's choice).
            verbose=1 if live_table else 0,
        ),
    )


def search_algorithm(sweep: SweepConfig, max_concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if sweep.search == "random":
        # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator: the
        # limit has to be given here, or every trial would start at once and deadlock.
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=max_concurrent)
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("search 'optuna' needs `pip install raylane[optuna]`") from None
    return OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=sweep.seed)


def run_sweep(
    sweep: SweepConfig,
    storage: Storage,
    *,
    resume: bool = False,
    address: str | None = None,
    register: str | None = None,
    promote: str | None = None,
    plot_dir: str = ".",
    tracking: Tracking | None = None,
    live_table: bool = True,
) -> SweepResult:
    """Run the sweep; `live_table=False` leaves Tune's status tables out of the console."""
    storage.check()
    parent = tracking and tracking.start_run(
        sweep.name, params=sweep.model_dump(mode="json"), tags={"raylane.kind": "sweep"}
    )
    nested = parent and tracking.nested(parent, **{"raylane.sweep": sweep.name})
    try:
        result = _sweep(
            sweep, storage, resume, address, register, promote, plot_dir, nested, live_table
        )
    except BaseException:  # FAILED in MLflow, not left RUNNING forever
        if parent:
            parent.end("FAILED")
        raise
    if parent:
        track_outcome(parent, result, sweep, plot_dir)
    return result


def _sweep(sweep, storage, resume, address, register, promote, plot_dir, tracking, live_table):
    from cluster.runtime import connect

    connect(address)
    tuner = build_tuner(sweep, storage, resume=resume, tracking=tracking, live_table=live_table)
    results = tuner.fit()
    rows = summary_rows(results, sweep, storage)
    errors = [
        f"trial {r.path.rsplit('/', 1)[-1]}: {first_line(r.error)}"
        for r in results
        if r.error is not None
    ]
    finished = [row for row in rows if row.get("checkpoint_key")]
    if not finished:
        raise RaylaneError(
            f"sweep {sweep.name!r} produced no checkpoint; trial errors:\n  " + "\n  ".join(errors)
        )
    best = finished[0]  # rows are sorted best first
    plot_uri = plot_trials(results, sweep, storage, plot_dir)
    result = SweepResult(sweep.name, best, rows, errors, plot_uri)
    result.params_plot_uri = plot_params(rows, sweep, storage, plot_dir)
    if register:
        result.registered = register_best(
            storage, sweep, best, register, promote, tracking=tracking
        )
    write_summary(storage, sweep, result)
    return result


def track_outcome(parent: TrackedRun, result: SweepResult, sweep: SweepConfig, plot_dir) -> None:
    """Close the sweep's MLflow runs: each trial's final state (ASHA stops a trial by ending its
    process, so its run cannot close itself), the best trial, the plots."""
    rows = {row["trial"]: row for row in result.rows}
    for child, tags in parent.children():
        if tags.get("raylane.kind") != "train":
            continue  # the registration's run
        row = rows.get(tags.get("raylane.trial"), {"status": "errored", "epochs": 0})
        child.set_tags({
            "raylane.status": row["status"], "raylane.epochs": row["epochs"],
            "raylane.early_stopped": row["status"] == "stopped early",
        })  # fmt: skip
        if result.registered and row.get("trial") == result.best["trial"]:
            child.set_tags({"raylane.registered": _version_name(result.registered)})
        child.end("FAILED" if row["status"] == "errored" else "FINISHED")
    parent.log_metrics({f"best_{sweep.metric}": result.best["metric"]})
    parent.set_tags({"raylane.best_trial": result.best["trial"], "raylane.trials": len(rows)})
    if result.registered:
        parent.set_tags({"raylane.registered": _version_name(result.registered)})
    for kind in ("trials", "params"):
        local = Path(plot_dir) / f"{sweep.name}-{kind}.png"
        if local.exists():
            parent.log_file(local, "plots")
    parent.end()


def _version_name(registered: dict) -> str:
    return f"{registered['name']}:{registered['version']}"


def register_best(
    storage: Storage, sweep: SweepConfig, best: dict, name: str, alias: str | None, *,
    tracking: Tracking | None = None,
):  # fmt: skip
    """Register the best trial's checkpoint (evaluated first: it gets its report), maybe
    promote it."""
    source = {"sweep": sweep.name, "trial": best["trial"], "params": best["params"]}
    registry = open_registry(storage)
    return register_checkpoint(
        registry, name, storage, best["checkpoint_key"], lineage=source, alias=alias,
        tracking=tracking,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(sweep_presets())
    parser = argparse.ArgumentParser(
        prog="raylane sweep",
        description="Sweep hyperparameters with Ray Tune (ASHA early stopping); register the "
        "best trial's checkpoint as a model version.",
    )
    parser.add_argument(
        "--config", default="digits-sweep", help=f"sweep preset ({presets}) or YAML"
    )
    add_common_args(parser, overrides="override a sweep field, e.g. --set num_samples=16")
    parser.add_argument("--resume", action="store_true", help="restore an interrupted sweep")
    parser.add_argument(
        "--trial-mode",
        choices=["auto", "in_trial", "trainer"],
        help="in_trial: each one-worker trial trains inside its Tune trial on data held in "
        "memory (fast start, Tune retries a failed trial); trainer: a Ray Train run per trial "
        "(any number of workers, Ray Train restarts dead workers); auto (default): in_trial "
        "when train.num_workers == 1 (the trial_mode field)",
    )
    parser.add_argument("--register", metavar="NAME", help="register the best checkpoint as NAME")
    parser.add_argument(
        "--promote", metavar="ALIAS", help="then point ALIAS (e.g. production) at it"
    )
    parser.add_argument("--plot-dir", default=".", help="where to save the plots locally")
    add_tracking_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_code(args.working_dir, args.py_modules)
    if args.promote and not args.register:
        raise ConfigError("--promote needs --register NAME")
    overrides = [*args.set, *([f"trial_mode={args.trial_mode}"] if args.trial_mode else [])]
    sweep = load_sweep_config(args.config, overrides)
    result = run_sweep(
        sweep,
        Storage.from_uri(args.storage),
        resume=args.resume,
        address=args.address,
        register=args.register,
        promote=args.promote,
        plot_dir=args.plot_dir,
        tracking=tracking_from(args),
    )
    from tune.report import format_table

    print(format_table(result, sweep))
    print(json.dumps({"best": result.best, "registered": result.registered}, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)

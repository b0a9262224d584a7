"""Optional experiment tracking in MLflow: off unless a tracking URI is set.

    raylane sweep --config digits-sweep --register digits --tracking-uri sqlite:///mlflow.db
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 raylane train --config digits-cnn

    tracking = tracking_from(args)                 # None: tracking is off
    run = tracking.start_run("digits-cnn", params=config.model_dump())
    run.log_metrics({"val_accuracy": 0.97}, step=3)
    run.log_artifacts(report_dir, "evaluation")
    run.end()

What is logged: a training run's config as params and its per-epoch metrics (from rank 0 of the
Train workers, `EpochLogger`); a sweep's config on a parent run, with one nested run per trial
(its config, metrics per epoch, final state, early-stopped or not) and the summary plots; a
registration's run (nested under the sweep when there is one): the registry version's meta,
lineage and URI, and the evaluation report, as artifacts.

Off costs nothing: with neither --tracking-uri nor $MLFLOW_TRACKING_URI, `tracking_from` returns
None, nothing here is called and mlflow is never imported (it takes a second to import). Any
store MLflow knows works: `sqlite:///mlflow.db`, `http(s)://server`, and a directory (MLflow 3
wants MLFLOW_ALLOW_FILE_STORE=true for that). Relative paths are made absolute here, because
Ray runs workers and Tune trials in directories of their own.

Secrets: the URI travels to Ray workers inside the loop config, so a URI with credentials in it
is refused; MLflow reads MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD from each process's own
environment (a local Ray's workers inherit the driver's; on a cluster, the nodes'), and raylane
never copies, passes or prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.errors import ConfigError, RaylaneError, first_line

ENV_URI, ENV_EXPERIMENT = "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "raylane"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs
BATCH = 100  # MLflow takes at most 100 params per log_batch call


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"MLflow tracking URI, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000 "
        f"(default ${ENV_URI}; tracking is off when neither is set)",
    )
    parser.add_argument(
        "--experiment",
        metavar="NAME",
        help=f"MLflow experiment (default ${ENV_EXPERIMENT}, else {DEFAULT_EXPERIMENT!r})",
    )


def tracking_from(args: argparse.Namespace | None = None) -> Tracking | None:
    """The tracking settings of a command, or None when tracking is off."""
    uri = getattr(args, "tracking_uri", None) or os.environ.get(ENV_URI)
    if not uri:
        return None
    experiment = (
        getattr(args, "experiment", None) or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
    )
    return Tracking(absolute_uri(uri), experiment)


def absolute_uri(uri: str) -> str:
    """sqlite:///rel.db and plain or file: paths made absolute; server URIs as they are."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri or uri.startswith("file:"):
        path = uri.removeprefix("file://").removeprefix("file:")
        return Path(path).expanduser().resolve().as_uri()
    return uri


@dataclass(frozen=True)
class Tracking:
    """Where runs go. Travels to Ray workers and Tune trials (no client, no secrets inside)."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    parent_run_id: str | None = None  # runs started from here nest under this one
    tags: tuple[tuple[str, str], ...] = ()  # set on every run started from here

    def __post_init__(self):
        parts = urllib.parse.urlsplit(self.uri)
        if parts.username or parts.password:
            raise ConfigError(
                "the MLflow tracking URI must not hold credentials (it is passed to Ray workers):"
                " remove user:password@ and set MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead"
            )

    def nested(self, parent: TrackedRun, **tags: str) -> Tracking:
        """These settings, for runs nested under `parent` and carrying `tags`."""
        return replace(self.tagged(**tags), parent_run_id=parent.run_id)

    def tagged(self, **tags: str) -> Tracking:
        """These settings, for runs that also carry `tags`."""
        merged = {**dict(self.tags), **{k: str(v) for k, v in tags.items()}}
        return replace(self, tags=tuple(sorted(merged.items())))

    def start_run(self, name: str, *, params: dict | None = None, tags: dict | None = None):
        """Create a run (RUNNING until `end`); RaylaneError if the tracking store is unusable."""
        _check_reachable(self.uri)
        try:
            client = _client(self.uri)
            experiment_id = _experiment_id(client, self.experiment)
            all_tags = {**dict(self.tags), **{k: str(v) for k, v in (tags or {}).items()}}
            if self.parent_run_id:
                all_tags[PARENT_TAG] = self.parent_run_id
            info = client.create_run(experiment_id, run_name=name, tags=all_tags).info
        except Exception as error:  # MLflow raises several types; all mean "cannot track"
            raise RaylaneError(f"MLflow tracking at {self.uri}: {first_line(error)}") from None
        run = TrackedRun(self.uri, info.run_id, experiment_id)
        if params:
            run.log_params(params)
        return run


@dataclass(frozen=True)
class TrackedRun:
    """One MLflow run, by id: cheap to pickle into a Ray worker."""

    uri: str
    run_id: str
    experiment_id: str

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = [Param(key, _text(value)) for key, value in sorted(flatten(params).items())]
        for start in range(0, len(flat), BATCH):
            _client(self.uri).log_batch(self.run_id, params=flat[start : start + BATCH])

    def log_metrics(self, metrics: dict, *, step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        _client(self.uri).log_batch(self.run_id, metrics=values)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(key, str(value)) for key, value in tags.items()]
        _client(self.uri).log_batch(self.run_id, tags=tags)

    def log_artifacts(self, directory: str | Path, path: str) -> None:
        _client(self.uri).log_artifacts(self.run_id, str(directory), path)

    def log_file(self, file: str | Path, path: str | None = None) -> None:
        _client(self.uri).log_artifact(self.run_id, str(file), path)

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED."""
        _client(self.uri).set_terminated(self.run_id, status)

    def children(self) -> list[tuple[TrackedRun, dict]]:
        """(run, tags) of the runs nested directly under this one."""
        found = _client(self.uri).search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'",
            max_results=10_000,
        )  # fmt: skip
        return [
            (TrackedRun(self.uri, r.info.run_id, self.experiment_id), r.data.tags) for r in found
        ]


class EpochLogger:
    """Rank 0's per-epoch metrics, best effort: a tracking outage must not stop a training run.

    The first failure prints one warning and ends logging for this worker; fewer retries than
    MLflow's default (7, backing off for minutes) keep a dead server from stalling an epoch.
    """

    def __init__(self, run: TrackedRun | None):
        self.run = run
        if run is not None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def __call__(self, metrics: dict, *, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log_metrics(metrics, step=step)
        except Exception as error:  # whatever the tracker's failure, training goes on
            print(f"warning: MLflow logging stopped for this run: {first_line(error)}", flush=True)
            self.run = None


def flatten(params: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists stay whole."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _text(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit on a param value


_CLIENTS: dict = {}


def _client(uri: str):
    """One MlflowClient per URI and process; mlflow is imported here, on first use only."""
    if uri not in _CLIENTS:
        from mlflow import MlflowClient

        _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
    return _CLIENTS[uri]


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # a concurrent trial created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _check_reachable(uri: str) -> None:
    """Fail in seconds on a tracking server that does not answer, not after MLflow's retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except urllib.error.HTTPError:
        pass  # it answered (a proxy or auth may guard /health): reachable
    except (urllib.error.URLError, OSError) as error:
        raise RaylaneError(
            f"cannot reach the MLflow tracking server at {uri}: {first_line(error)}; start it "
            f"or fix --tracking-uri / ${ENV_URI}"
        ) from None

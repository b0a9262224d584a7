"""The only place that connects to Ray.

    from cluster.runtime import connect
    connect()                      # $RAY_ADDRESS (set inside `ray job submit`) or a local Ray
    connect("ray://head:10001")    # a remote cluster

Your own code (a custom model class) follows one rule, `use_code`: the working directory, the
one you run from or `--working-dir DIR`, is importable by the driver (put on its sys.path),
and with `--working-dir` / `--py-modules` it is shipped to every Train worker, Tune trial and
Serve replica in the job's runtime_env (only code paths: never env vars or secrets).

Token authentication is Ray's own: with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the
environment, `ray.init` presents the token. S3 credentials never travel in a runtime_env: each
node reads them from its own environment or credentials file (a local Ray inherits this
process's). Ray Tune would copy AWS_* secrets from this process's environment into every trial
actor's runtime_env, so `connect` first moves them into a private credentials file
(cluster/credentials.py); it changes os.environ to do so.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cluster.credentials import move_secrets_to_file
from cluster.errors import ConfigError

# Ray Train V2 answers each `ray.train.report` only at the controller's next poll of the
# workers (2 s by default, docs/architecture.md, "Ray facts"). Epochs here take a second or less, so a 2 s poll
# would dominate small runs and sweeps; 0.25 s keeps the controller cheap and reports fast.
TRAIN_POLL_INTERVAL_S = "0.25"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a node's address is loopback
JOB_ENV_VARS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S,
    # Ray Data's progress bars interleave badly with our per-epoch lines.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Train V2 re-routes print() in workers through a logger and also tees it to the
    # redirected stdout: every epoch line appeared twice (ray/train/v2/_internal/logging).
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Train V2's worker logging sends INFO to the console, among it "Reporting training
    # result ...: TrainingReport(...)" per rank and epoch; without it workers log at WARNING.
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
}


# The paths `ray job submit` leaves behind (cluster/configs/job-runtime-env.yaml): the same
# list prunes a --working-dir upload here.
JOB_RUNTIME_ENV = Path(__file__).parent / "configs" / "job-runtime-env.yaml"
_code_env: dict = {}  # runtime_env entries that ship the user's code, set by use_code


def use_code(working_dir: str | None = None, py_modules: Sequence[str] = ()) -> None:
    """Make the user's code importable here, and (when named) on every worker and replica.

    The driver gets `working_dir` (default: the current directory, which the `raylane`
    console script does not put on sys.path) and each py_module's parent on its sys.path, so
    `model.custom_class=my_pkg.nets:MyNet` validates where it is typed. A local Ray's workers
    get the current directory from Ray itself; a cluster's get only what is shipped.
    """
    import yaml

    root = _existing(working_dir or os.getcwd(), "--working-dir")
    modules = [_existing(path, "--py-modules") for path in py_modules]
    for path in [root, *(module.parent for module in modules)]:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    _code_env.clear()
    if working_dir:
        excludes = yaml.safe_load(JOB_RUNTIME_ENV.read_text())["excludes"]
        _code_env.update(working_dir=str(root), excludes=excludes)
    if modules:
        _code_env["py_modules"] = [str(module) for module in modules]


def _existing(path: str, flag: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise ConfigError(f"{flag} {path}: no such directory (give your project or package dir)")
    return resolved


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray once per process; later calls only re-apply the settings."""
    import ray

    configure_process()
    if not _in_ray_worker():
        # Before ray.init (a local Ray's processes inherit this environment) and before any
        # Tuner is built, also when Ray was initialized by someone else. Not in a Ray worker (a
        # trial training): its keys are its node's, no Tuner is built there, and a worker exits
        # without running atexit, so the file would be left behind.
        move_secrets_to_file()
    if ray.is_initialized():
        return
    for name, value in JOB_ENV_VARS.items():
        os.environ.setdefault(name, value)  # inherited by a local Ray's workers
    kwargs: dict = {"log_to_driver": True, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by `ray job submit`
    if not submitted_job:
        # A running cluster's workers don't inherit our environment; any Ray's workers get
        # the code only if it ships. A submitted job already runs in its own runtime_env
        # (cluster/configs/job-runtime-env.yaml, --working-dir) and Ray refuses a second one.
        runtime_env = {"env_vars": dict(JOB_ENV_VARS)} if address else {}
        runtime_env.update(_code_env)
        kwargs["runtime_env"] = runtime_env or None
    if not address or submitted_job:
        kwargs["num_cpus"] = num_cpus
        kwargs["include_dashboard"] = True
        kwargs["dashboard_host"] = "127.0.0.1"
    if not address:
        # A Ray that raylane starts itself serves this machine only. By default Ray takes the
        # machine's network address as the node's and its GCS, raylet, agents and workers
        # listen on every interface (14 sockets for `raylane serve`). With this variable Ray
        # takes the loopback address as the node IP, as it does on macOS, and they listen on
        # loopback; inherited by every process of the local Ray. Never set when connecting to
        # a cluster: its nodes must reach each other (docs/architecture.md, "Ray facts").
        loopback_only()
    ray.init(address=address, **kwargs)
    if not address:  # a Ray of our own: say where its logs are, the console shows only ours
        print(f"Ray's logs: {ray_log_dir()}", flush=True)


# What raylane's jobs print in Ray's workers starts with the run's name in brackets:
# "[digits-cnn] epoch 3/10 ...", "[trial-1a2b_00003] epoch 1/8: 40/~120 batches ...".
RAYLANE_LINE = re.compile(r"\[[\w.-]+\] ")


def show_only_raylane_lines() -> str | None:
    """From now on this driver's console shows, of all that Ray prints on it, only raylane's
    own lines from the workers (epochs, progress), without Ray's `(RayTrainWorker pid=...)`
    prefix. The rest (the raylet's worker-count warnings, Train's and Ray Data's set-up
    messages, library deprecation warnings, Serve's replica logs) goes, as Ray would have
    printed it, to a file in Ray's log directory, whose path is returned (and printed): the
    demo printed ~750 lines of it around ~40 of its own.

    Ray has no public switch for this. Its driver prints worker output through one handler of
    `global_worker_stdstream_dispatcher`, and the cluster's error messages through the module
    function `print_to_stdstream`; both are replaced here. None (and Ray's output unchanged)
    where those hooks are missing, e.g. in another Ray version.
    """
    import ray._private.worker as ray_worker

    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    print_lines = getattr(ray_worker, "print_worker_logs", None)
    if dispatcher is None or print_lines is None:
        return None
    directory = ray_log_dir() or tempfile.gettempdir()  # a cluster's session dir may be remote
    path = os.path.join(directory, f"driver-console-{os.getpid()}.log")
    log = open(path, "a", buffering=1)  # noqa: SIM115 - open until the process exits

    def route(batch: dict, ignore_prefix: bool = False) -> None:
        lines = batch.get("lines", [])
        ours = [line for line in lines if RAYLANE_LINE.match(line)]
        if ours:
            print("\n".join(ours), file=sys.stderr if batch.get("is_err") else sys.stdout)
        if len(ours) < len(lines):
            rest = [line for line in lines if not RAYLANE_LINE.match(line)]
            print_lines({**batch, "lines": rest}, log, ignore_prefix)

    dispatcher.remove_handler("ray_print_logs")  # the name ray.init registers it under
    dispatcher.add_handler("ray_print_logs", route)
    ray_worker.print_to_stdstream = route  # the cluster's error messages (listen_error_messages)
    print(f"Ray's own output: {path}", flush=True)
    return path


def ray_log_dir() -> str | None:
    """The log directory of the Ray session this process started or joined."""
    import ray

    node = ray._private.worker._global_node  # no public API names the session directory
    return None if node is None else os.path.join(node.get_session_dir_path(), "logs")


def loopback_only() -> None:
    """Make the Ray about to start take 127.0.0.1 as its node address (see connect)."""
    from ray._private import ray_constants

    if os.environ.setdefault(LOOPBACK_ENV, "0") == "0":
        # The driver read the variable when Ray was imported; Ray's processes read it at start.
        ray_constants.ENABLE_RAY_CLUSTER = False


def _in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def configure_process() -> None:
    """Process-wide Ray settings raylane relies on, made here and nowhere else.

    Ray 2.60's default (v2) Parquet datasource lists files in a task that asks for a whole
    CPU. Beside fractional training workers and concurrent trials that CPU may never be free
    (seen here: a sweep hung with 0.98 CPUs idle), so Ray Data reads with the v1 datasource,
    whose read tasks take the fraction `workloads.data` asks for.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    # Progress bars (Parquet sampling, each split's execution) interleave with our lines; the
    # RAY_DATA_DISABLE_PROGRESS_BARS of JOB_ENV_VARS is read when Ray Data is imported, which
    # in a driver is before connect() sets it. Datasets carry this context to their workers.
    context.enable_progress_bars = False
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")  # spends its "Progress bars disabled" warning
    # Ray Data logs every dataset's plan and progress at INFO on the console; they stay in
    # its log files (logs/ray-data under the directory connect() prints).
    for handler in logging.getLogger("ray.data").handlers:
        if "File" not in type(handler).__name__:  # the console (PlainRayHandler), not the file
            handler.setLevel(logging.WARNING)


def cluster_resources() -> dict[str, float]:
    """Total CPUs/GPUs of the connected cluster (connects first if needed)."""
    import ray

    connect()
    return ray.cluster_resources()

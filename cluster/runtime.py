"""The only place that connects to Ray.

    from cluster.runtime import connect
    connect()                      # $RAY_ADDRESS (set inside `ray job submit`) or a local Ray
    connect("ray://head:10001")    # a remote cluster

Token authentication is Ray's own: with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the
environment, `ray.init` presents the token. S3 credentials never travel in a runtime_env: each
node reads them from its own environment (a local Ray inherits this process's).
"""

from __future__ import annotations

import logging
import os

# Ray Train V2 answers each `ray.train.report` only at the controller's next poll of the
# workers (2 s by default, docs/architecture.md, "Ray facts"). Epochs here take a second or less, so a 2 s poll
# would dominate small runs and sweeps; 0.25 s keeps the controller cheap and reports fast.
TRAIN_POLL_INTERVAL_S = "0.25"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a node's address is loopback
JOB_ENV_VARS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S,
    # Ray Data's progress bars interleave badly with our per-epoch lines.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray once per process; later calls only re-apply the settings."""
    import ray

    configure_process()
    if ray.is_initialized():
        return
    for name, value in JOB_ENV_VARS.items():
        os.environ.setdefault(name, value)  # inherited by a local Ray's workers
    kwargs: dict = {"log_to_driver": True, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    submitted_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # set by `ray job submit`
    if address and not submitted_job:
        # Connecting to a running cluster: its workers don't inherit our environment. A
        # submitted job already runs in its own runtime_env (cluster/configs/job-runtime-env.yaml)
        # and Ray refuses a second one from the driver.
        kwargs["runtime_env"] = {"env_vars": dict(JOB_ENV_VARS)}
    else:
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


def loopback_only() -> None:
    """Make the Ray about to start take 127.0.0.1 as its node address (see connect)."""
    from ray._private import ray_constants

    if os.environ.setdefault(LOOPBACK_ENV, "0") == "0":
        # The driver read the variable when Ray was imported; Ray's processes read it at start.
        ray_constants.ENABLE_RAY_CLUSTER = False


def configure_process() -> None:
    """Process-wide Ray settings raylane relies on, made here and nowhere else.

    Ray 2.60's default (v2) Parquet datasource lists files in a task that asks for a whole
    CPU. Beside fractional training workers and concurrent trials that CPU may never be free
    (seen here: a sweep hung with 0.98 CPUs idle), so Ray Data reads with the v1 datasource,
    whose read tasks take the fraction `workloads.data` asks for.
    """
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = False


def cluster_resources() -> dict[str, float]:
    """Total CPUs/GPUs of the connected cluster (connects first if needed)."""
    import ray

    connect()
    return ray.cluster_resources()

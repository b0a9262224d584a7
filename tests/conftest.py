"""Shared fixtures: a real SeaweedFS S3 server and a real local Ray, nothing mocked.

Two tiers: tests/unit (no Ray, no servers; `make test-fast`, well under a minute) and
tests/integration (real Ray, Serve and SeaweedFS; every test there is marked `integration`).
Helpers both tiers use are in tests/helpers.py; the storage and registry contracts that run on
both backends are in tests/storage_contract.py and tests/registry_contract.py.

- `s3_server` (session): SeaweedFS on 127.0.0.1 with generated keys in its credentials file;
  exports AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE and the endpoint (never a secret) into this
  process's environment so that Storage, boto3 and a Ray started later all see them.
- `s3_storage` / `local_storage`: a fresh, empty Storage per test.
- `ray_session` (module): a local Ray with 2 CPUs, shared by the tests of one module.
- `one_thread`: torch on one intra-op thread for the test (tiny models, busy 2-core machine).
- `trained_digits` (module): `trained_digits(steps)`, a digits MLP checkpoint trained `steps`
  full-batch steps (made once per module) that records the prepared digits as its data and a
  20% validation split, so it can be registered with its evaluation report.
- `ray_head`: a head started the way a cluster is, `ray start --head`, with token
  authentication and the dashboard on 127.0.0.1; yields (environment, dashboard URL) with the
  head's temp dir as `.temp_dir`; `ray_node_env` adds to the head's environment. Use it only in
  modules without `ray_session`: one Ray instance at a time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from cluster.s3server import S3Server, export_env, free_port
from cluster.storage import Storage

TEST_BUCKET = "raylane-test"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine (Ray, other
    tests) OpenMP threads spin against each other: 1 s of training became 50 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    import torch
    from helpers import digits_checkpoint

    from workloads.data import prepare

    root = tmp_path_factory.mktemp("digits")
    data_uri = prepare(Storage(str(root / "data")), "digits").uri
    made = {}

    def checkpoint(steps: int) -> Path:
        if steps not in made:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # see one_thread
            made[steps] = digits_checkpoint(
                root / f"steps-{steps}", seed=1, steps=steps, data_uri=data_uri
            )
            torch.set_num_threads(threads)
        return made[steps]

    return checkpoint


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """End the test process once its results are reported, skipping interpreter teardown.

    After `ray.shutdown()` the process still runs native threads of Ray's core worker, gRPC,
    the AWS SDK under pyarrow's S3 filesystem and torch's thread pools (about 30 at the end of
    the suite). Interpreter teardown then runs C++ static destructors under them, and that
    intermittently crashed: CI once printed "190 passed" and then a segmentation fault, which
    failed `make test`. The results are final here (summary printed, files written), so the
    process exits with pytest's status without tearing down what it no longer needs.
    """
    status = config.stash.get(EXIT_STATUS, None)
    if status is None:  # no session ran (--help, usage errors): leave pytest to it
        return
    ray = sys.modules.get("ray")  # not imported for a run that never used it
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    integration = pytest.mark.integration
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(integration)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"), port=free_port(), bucket=TEST_BUCKET)
    env = server.start(timeout_s=90)
    env.pop("RAYLANE_STORAGE")
    saved = export_env(env)  # the profile, as `raylane storage env` sets it
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_storage(s3_server, request) -> Storage:
    """An empty prefix in the test bucket, unique to this test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-").lower()[:40]
    return Storage(f"s3://{TEST_BUCKET}/{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def local_storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "artifacts"))


@pytest.fixture(scope="module")
def ray_session(s3_server):
    """A real local Ray (2 CPUs) for one test module; S3 variables are already exported."""
    import ray

    from cluster.runtime import connect

    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2)
    yield ray
    ray.shutdown()


class RayHead(tuple):
    """`env, dashboard_url = ray_head`; `ray_head.temp_dir` holds the head's session logs."""

    temp_dir: str


@pytest.fixture
def ray_node_env() -> dict[str, str]:
    """Variables the head's processes get beyond this one's; a module overrides this fixture
    to give its head, say, S3 keys in its environment the way KubeRay pods get them."""
    return {}


@pytest.fixture
def ray_head(s3_server, ray_node_env):
    ray = str(Path(sys.executable).parent / "ray")
    # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep for them.
    temp_dir = tempfile.mkdtemp(prefix="raylane-ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # The node's `python` is this virtualenv's, as on a node where raylane is installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    node_env = {**env, **ray_node_env}
    gcs, dashboard = free_port(), free_port()
    started = subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={gcs}",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=node_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    head = RayHead((env, f"http://127.0.0.1:{dashboard}"))
    head.temp_dir = temp_dir
    yield head
    # Not `ray stop`: it stops every Ray on the host. The GCS server and the autoscaler
    # monitor outlive a SIGTERM (seen here: both still up 15 s later), so they get a SIGKILL
    # after a short grace rather than the default one.
    stop_processes(processes_of(temp_dir), grace_s=2.0)
    shutil.rmtree(temp_dir, ignore_errors=True)


def processes_of(temp_dir: str) -> set[int]:
    """PIDs of the Ray processes started with `temp_dir` (GCS, raylet, dashboard, agents: it
    is in their command lines) and of all their descendants (workers, job drivers)."""
    parents, roots = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if temp_dir.encode() in command:
            roots.add(pid)
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found


def stop_processes(pids: set[int], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace_s`."""
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(map(alive, pids)):
            time.sleep(0.2)
        pids = set(filter(alive, pids))
        if not pids:
            return


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that does not reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

"""Jobs the way a platform team runs them: the real `ray job submit` against a head started with
`ray start --head` and token authentication, and training spread over a multi-node cluster.

Its own module: each test runs its own Ray, so no other Ray of this test process is alive.
The head here holds the S3 keys in its environment, as a KubeRay pod does; the sweep drivers
must still leave them nowhere a dashboard user, a log reader or a storage reader could see."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import stop_processes
from helpers import descendants, digits_checkpoint, register_local, wait_for

from cluster.s3server import free_port
from cluster.storage import Storage
from workloads.checkpoint import open_registry
from workloads.config import load_job_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_node_env(s3_server) -> dict[str, str]:
    """The head's processes hold the S3 keys in their environment, as KubeRay pods get them from
    a Secret (cluster/configs/kuberay): so does a job's driver there."""
    keys = s3_server.credentials()
    return {
        "AWS_ACCESS_KEY_ID": keys["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"],
    }


def test_submitted_and_client_sweeps_run_and_leave_the_s3_secret_nowhere(
    ray_head, ray_node_env, s3_storage, tmp_path
):
    """The secret must not show in the dashboard's APIs, Ray's session logs, storage or the
    console. Before raylane moved AWS keys out of a driver's environment (cluster/credentials.py)
    this failed with "the S3 secret is readable in: ['/api/v0/actors', '/api/v0/tasks',
    'file:session_.../logs/runtime_env_agent.log']": Ray Tune had copied it into every trial
    actor's runtime_env."""
    env, address = ray_head
    secret = ray_node_env["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) >= 32  # random (cluster/s3server.py): found only where it was copied
    token = env["RAY_AUTH_TOKEN"]
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no jobs API
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    key_copies = set(Path(tempfile.gettempdir()).glob("raylane-aws-*"))

    submitted = submit_sweep(env, address, s3_storage)
    # A driver outside the cluster that holds the keys the way a user's shell exports them.
    client = run_sweep_driver({**env, **ray_node_env}, f"{s3_storage.uri}/client", tmp_path)

    name, version = open_registry(s3_storage).resolve("jobbed@production")
    assert version == 1
    assert s3_storage.exists(f"registry/jobbed/versions/{version}/model.safetensors")
    assert Storage(f"{s3_storage.uri}/client").exists("sweeps/debug-sweep/summary.json")
    places = {
        **dashboard_answers(address, token),
        **files_under(Path(ray_head.temp_dir)),
        **{f"storage:{key}": s3_storage.read_bytes(key) for key in s3_storage.list("")},
        "console": "".join([*submitted, *client]).encode(),
    }
    assert any(b"trial" in text for text in places.values())  # the search sees real output
    leaks = [place for place, text in places.items() if secret.encode() in text]
    assert not leaks, f"the S3 secret is readable in: {leaks[:20]}"
    # The drivers' private copies of the keys (cluster/credentials.py) went with them.
    assert set(Path(tempfile.gettempdir()).glob("raylane-aws-*")) == key_copies


def submit_sweep(env: dict, address: str, storage: Storage) -> tuple[str, str]:
    """`ray job submit` of a sweep that registers and promotes; returns (stdout, stderr)."""
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}  # the jobs API is addressed below
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--runtime-env",
            str(REPO / "cluster/configs/job-runtime-env.yaml"),
            "--",
            *SWEEP,
            "--storage",
            storage.uri,
            "--set",
            "num_samples=2",
            "--register",
            "jobbed",
            "--promote",
            "production",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout
    return submit.stdout, submit.stderr


def run_sweep_driver(env: dict, storage_uri: str, plot_dir: Path) -> tuple[str, str]:
    """A sweep whose driver runs here and connects to the cluster at $RAY_ADDRESS."""
    driver = subprocess.run(
        [*SWEEP, "--storage", storage_uri, "--set", "num_samples=1", "--plot-dir", str(plot_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    return driver.stdout, driver.stderr


SWEEP = [sys.executable, "-m", "tune.sweep", "--config", "debug-sweep"]


def dashboard_answers(address: str, token: str) -> dict[str, bytes]:
    """What the dashboard tells anyone holding the token about jobs, actors, tasks and
    runtime envs."""
    answers = {}
    for path in ("/api/jobs/", "/api/v0/actors", "/api/v0/tasks", "/api/v0/runtime_envs"):
        url = f"{address}{path}?limit=10000&detail=1" if "v0" in path else f"{address}{path}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answers[path] = response.read()
    assert b"serialized_runtime_env" in answers["/api/v0/actors"]  # the detail Tune fills
    return answers


def files_under(directory: Path) -> dict[str, bytes]:
    """Every regular file below `directory` (Ray's session dirs: logs, runtime envs, state)."""
    return {
        f"file:{path.relative_to(directory)}": path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def test_training_workers_spread_over_nodes_share_only_storage(s3_server, s3_storage):
    import ray
    from ray.cluster_utils import Cluster

    from workloads.train import run_training

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.head_node, *(cluster.add_node(num_cpus=1) for _ in range(2))]
    node_ids = {node.node_id for node in nodes}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        config = load_job_config(
            "debug",
            ["name=spread", "train.placement_strategy=STRICT_SPREAD", "train.cpus_per_worker=0.5"],
        )
        summary = run_training(config, s3_storage, verbose=False)
    finally:
        ray.shutdown()
        cluster.shutdown()

    attempt = s3_storage.read_json(s3_storage.list("runs/spread/attempts")[0])
    assert len(set(attempt["nodes"])) == 2, "each worker should run on its own node"
    assert set(attempt["nodes"]) <= node_ids
    assert summary.best_checkpoint_uri.startswith("s3://")
    assert s3_storage.exists(f"{summary.best_checkpoint_key}/model.safetensors")


MY_NET = """
import math

import torch


class MyNet(torch.nn.Module):
    def __init__(self, input_shape, num_classes, hidden=16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(math.prod(input_shape), hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)
"""
CUSTOM = ["model.family=custom", "model.custom_class=my_pkg.nets:MyNet"]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A user's project with its own model package; the operator allows it to be served."""
    (tmp_path / "project" / "my_pkg").mkdir(parents=True)
    (tmp_path / "project" / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "project" / "my_pkg" / "nets.py").write_text(MY_NET)
    monkeypatch.setenv("RAYLANE_CUSTOM_MODEL_MODULES", "my_pkg")  # before the head starts
    return tmp_path / "project"


def test_a_custom_model_ships_with_working_dir_to_train_sweep_and_serve(
    project, ray_head, s3_storage, tmp_path
):
    env, address = ray_head
    submitted = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    job = ["--", "raylane", "train", "--config", "debug", "--set", CUSTOM[0], "--set", CUSTOM[1]]
    job += ["--num-workers", "1", "--storage", s3_storage.uri, "--register", "mine"]
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(project), *job],
        env=submitted,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    meta = open_registry(s3_storage).describe("mine", 1)["meta"]
    assert meta["model"]["class"] == "my_pkg.nets:MyNet"

    # From another directory: only --working-dir brings my_pkg to the driver, the trials'
    # workers and the Serve replicas of the cluster.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    overrides = f"overrides=[train.num_workers=1, {', '.join(CUSTOM)}]"
    pipeline = [str(Path(sys.executable).parent / "raylane"), "pipeline", "--config"]
    pipeline += ["debug-sweep", "--set", "num_samples=1", "--set", overrides, "--requests", "5"]
    pipeline += ["--storage", s3_storage.uri, "--model-name", "mine", "--port", str(free_port())]
    ran = subprocess.run(
        [*pipeline, "--working-dir", str(project)],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1])["version"] == 2
    # The pipeline's console: its own lines and the trials' epoch lines, not Ray's.
    console = ran.stdout + ran.stderr
    assert re.search(r"^\[trial-\w+\] epoch 1/\d+ ", console, flags=re.M), console[-3000:]
    assert "(RayTrainWorker pid=" not in console and "(raylet)" not in console
    report = s3_storage.read_json("pipelines/debug-sweep/report.json")
    assert report["requests"]["count"] == 5 and report["version"] == 2


def test_training_prints_one_line_per_epoch_and_where_rays_logs_are(tmp_path):
    raylane = str(Path(sys.executable).parent / "raylane")
    ran = subprocess.run(
        # A progress line every 0.05 s stands in for a long epoch's every 15 s.
        [raylane, "train", "--config", "debug", "--set", "train.epochs=3", "--set"]
        + ["train.progress_every_s=0.05"],
        cwd=tmp_path,  # ./artifacts, the default storage, lands here
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-3000:]
    assert [output.count(f"[debug] epoch {epoch}/3 ") for epoch in (1, 2, 3)] == [1, 1, 1]
    assert "Reporting training result" not in output and "TrainingReport(" not in output
    progress = re.findall(
        r"\[debug\] epoch 1/3: (\d+)/~?(\d+) batches \(\d+%\), [\d.]+ batches/s", output
    )
    assert progress and all(int(done) <= int(total) for done, total in progress), output[-3000:]
    log_dir = Path(re.search(r"Ray's logs: (\S+)", output).group(1))
    logged = "".join(path.read_text(errors="replace") for path in log_dir.glob("worker-*.out"))
    assert "[debug] epoch 3/3 " in logged


def test_sigterm_stops_raylane_serve_cleanly(tmp_path):
    """`kill` (a process manager, a container stop) ends `raylane serve` like Ctrl-C: exit 0,
    the app gone, and no abort dump from Ray's C++ core in the output. With `--grpc-port` the
    v2 gRPC service answers too, at the address it printed; with `--min-replicas 0` the app
    starts with no replica, the first request waits for a cold start and gets its answer, and
    the command prints how long the cold start took."""
    storage = Storage(str(tmp_path / "artifacts"))
    register_local(open_registry(storage), digits_checkpoint(tmp_path / "ckpt", seed=1, steps=5))
    port, grpc_port, log = free_port(), free_port(), tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "raylane"), "serve", "--model", "digits:1"]
    command += ["--storage", storage.uri, "--port", str(port), "--grpc-port", str(grpc_port)]
    command += ["--min-replicas", "0", "--max-replicas", "1"]
    with open(log, "w") as out:
        serving = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(port) or serving.poll() is not None, timeout_s=180,
                 what="raylane serve answering /healthz")  # fmt: skip
        assert answers(port), log.read_text()[-3000:]
        assert grpc_live(grpc_port), log.read_text()[-3000:]
        # printed from the replica states it polls, so shortly after the first answer
        wait_for(lambda: "cold start:" in log.read_text(), timeout_s=30, what="the cold start")
        serving.send_signal(signal.SIGTERM)
        serving.wait(timeout=120)
    finally:
        if serving.poll() is None:
            stop_processes(descendants({serving.pid}) | {serving.pid})
    output = log.read_text()
    assert serving.returncode == 0, output[-3000:]
    assert "stopping" in output
    assert f"gRPC (Open Inference Protocol v2) at 127.0.0.1:{grpc_port}" in output, output[-3000:]
    cold_start = r"cold start: digits:1 scaled up from zero replicas in [\d.]+ s"
    assert re.search(cold_start, output), output[-3000:]
    for sign in ("Aborted", "core dumped", "*** SIG", "Traceback"):
        assert sign not in output, output[-3000:]
    assert not answers(port)


def grpc_live(port: int) -> bool:
    import grpc

    from serve.proto import grpc_predict_v2_pb2 as pb
    from serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        return stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status == 200
    except OSError:  # refused, reset, or a 5xx/404 while the app deploys
        return False

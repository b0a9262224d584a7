"""Jobs the way a platform team runs them: the real `ray job submit` against a head started with
`ray start --head` and token authentication, and training spread over a multi-node cluster.

Its own module: each test runs its own Ray, so no other Ray of this test process is alive."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from workloads.checkpoint import open_registry
from workloads.config import load_job_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def test_ray_job_submit_runs_a_sweep_that_registers_a_model_in_s3(ray_head, s3_storage):
    env, address = ray_head
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}  # the jobs API is addressed below
    with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no jobs API
        urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
    assert refused.value.code == 401

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
            "python",
            "-m",
            "tune.sweep",
            "--config",
            "debug-sweep",
            "--storage",
            s3_storage.uri,
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
    name, version = open_registry(s3_storage).resolve("jobbed@production")
    assert version == 1
    assert s3_storage.exists(f"registry/jobbed/versions/{version}/model.safetensors")
    # The S3 secret came from the node's environment, never through the job's arguments.
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in submit.stdout + submit.stderr


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

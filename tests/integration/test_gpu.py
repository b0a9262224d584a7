"""GPU paths: DDP and FSDP on CUDA with mixed precision, and a GPU Serve replica. Skipped without CUDA."""

from __future__ import annotations

import pytest

from workloads.config import load_job_config

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.mark.parametrize(
    "precision, strategy", [("bf16", "ddp"), ("fp16", "ddp"), ("bf16", "fsdp"), ("fp16", "fsdp")]
)
def test_training_on_gpu_with_mixed_precision(ray_session, local_storage, precision, strategy):
    import torch

    from workloads.train import run_training

    workers = min(2, torch.cuda.device_count())
    config = load_job_config(
        "digits-cnn",
        [
            f"name=gpu-{precision}-{strategy}",
            f"train.strategy={strategy}",
            "train.use_gpu=true",
            f"train.num_workers={workers}",
            f"train.precision={precision}",
            "train.epochs=8",
        ],
    )
    summary = run_training(config, local_storage, verbose=False)
    assert summary.metrics["val_accuracy"] >= 0.95


def test_a_gpu_serve_replica_answers_like_the_cpu_predictor(ray_session, local_storage, tmp_path):
    """A replica with num_gpus > 0 loads the model on CUDA; its HTTP answers match the CPU
    Predictor's on the same rows."""
    import httpx
    from helpers import digits_checkpoint, digits_data
    from ray import serve as ray_serve

    from cluster.s3server import free_port
    from serve.app import deploy
    from serve.config import ServeArgs
    from serve.predictor import Predictor
    from workloads.checkpoint import open_registry

    registry = open_registry(local_storage)
    registry.register("digits", digits_checkpoint(tmp_path / "v1", seed=1), lineage={})
    args = ServeArgs(model="digits:1", storage=local_storage.uri, num_cpus=0.5, num_gpus=1)
    url = deploy(args, host="127.0.0.1", port=free_port())
    try:
        features, _ = digits_data()
        rows = features[:8].tolist()
        answer = httpx.post(url, json={"instances": rows}, timeout=60).json()
        expected = Predictor.from_registry(registry, "digits:1").predict_instances(
            rows, max_instances=8
        )
        assert answer["predictions"] == expected["predictions"]
        info = httpx.get(url.removesuffix(":predict"), timeout=30).json()
        assert info["version"] == 1
    finally:
        ray_serve.shutdown()

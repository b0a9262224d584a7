"""GPU paths: DDP on CUDA with mixed precision, and a GPU Serve replica. Skipped without CUDA."""

from __future__ import annotations

import pytest

from workloads.config import load_job_config

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_gpu_with_mixed_precision(ray_session, local_storage, precision):
    import torch

    from workloads.train import run_training

    workers = min(2, torch.cuda.device_count())
    config = load_job_config(
        "digits-cnn",
        [
            f"name=gpu-{precision}",
            "train.use_gpu=true",
            f"train.num_workers={workers}",
            f"train.precision={precision}",
            "train.epochs=8",
        ],
    )
    summary = run_training(config, local_storage, verbose=False)
    assert summary.metrics["val_accuracy"] >= 0.95

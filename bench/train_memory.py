"""Memory per training worker: parameters + gradients + optimizer state, ddp against fsdp.

    python -m bench.train_memory            # about a minute on 2 cores
    python -m bench.train_memory --quick    # a smaller model

Each case is a real Ray Train run of 1 or 2 workers that builds the model, wraps it where
training does (`workloads.worker.wrap_model`: DDP, or FSDP2's `fully_shard`), makes the
training optimizer (AdamW, `make_optimizer`) and takes training steps (`workloads.step`).
Then every rank counts the bytes of the tensors it holds itself: its parameters (an FSDP
rank's local shard, not the gathered whole), their gradients and the optimizer's state (Adam
keeps two moments per parameter). The number is the largest rank's: what one worker needs.
Counting tensors, not the process's resident memory, leaves out what does not scale with the
model (the Python interpreter, torch's libraries, Ray's worker) and is exact, so one run is
enough: there is no spread to report.

Goal: with 2 workers, fsdp holds at most 0.55x of what ddp holds per worker (an even split of
every tensor would be 0.5x; FSDP2 pads each shard to equal size).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ray.train import UserCallback

from bench.common import RESULTS_DIR, Result, bench_main, start_ray

MLP = [2048, 2048, 2048]  # ~8.5M parameters on the digits' 64 features: 34 MB of fp32
QUICK_MLP = [256, 256]
STEPS = 3


def tensor_bytes(tensors) -> int:
    """Bytes of these tensors as this rank holds them (an FSDP DTensor: its local shard)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def held_bytes(model, optimizer) -> dict[str, int]:
    parameters = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "numel")]
    return {
        "parameters": tensor_bytes(parameters),
        "gradients": tensor_bytes(p.grad for p in parameters if p.grad is not None),
        "optimizer": tensor_bytes(t for t in state if t.dim() > 0),  # not Adam's step counts
    }


def measure_worker(config: dict) -> None:
    """Ray Train worker: wrap, step, count, report."""
    import ray.train
    import torch

    from workloads.models import build_model
    from workloads.step import train_step
    from workloads.trust import CodePolicy
    from workloads.worker import make_optimizer, wrap_model

    job, spec = config["job"], config["spec"]
    torch.manual_seed(0)
    device = ray.train.torch.get_device()
    model = wrap_model(build_model(spec, policy=CodePolicy.CONFIGURED), job.train,
                       device=device, dtype=None)  # fmt: skip
    optimizer = make_optimizer(model, job.train)
    features = torch.randn(job.train.batch_size, spec["kwargs"]["in_features"])
    labels = torch.randint(0, spec["kwargs"]["num_classes"], (job.train.batch_size,))
    for _ in range(STEPS):
        train_step(model, features, labels, optimizer)
    ray.train.report(
        held_bytes(model, optimizer) | {"rank": ray.train.get_context().get_world_rank()}
    )


class Ranks(UserCallback):
    """Runs in the Train controller (another process): writes every rank's report to `path`
    on this machine (the benchmark runs a local Ray)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        Path(self.path).write_text(json.dumps(metrics))


def measure(strategy: str, workers: int, hidden: list[int]) -> dict[str, int]:
    """The largest rank's bytes of a `workers`-worker run under `strategy`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workloads.config import load_job_config
    from workloads.models import model_spec

    job = load_job_config(
        "debug",
        [f"model.hidden_sizes={hidden}", f"train.strategy={strategy}",
         f"train.num_workers={workers}", "train.cpus_per_worker=0.5"],
    )  # fmt: skip
    spec = model_spec(job.model, input_shape=[64], num_classes=10, vocab_size=None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranks.json"
        TorchTrainer(
            measure_worker,
            train_loop_config={"job": job, "spec": spec},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name=f"memory-{strategy}-{workers}", callbacks=[Ranks(str(path))]),
        ).fit()
        per_rank = json.loads(path.read_text())
    largest = max(
        per_rank, key=lambda m: sum(m[k] for k in ("parameters", "gradients", "optimizer"))
    )
    return {k: int(largest[k]) for k in ("parameters", "gradients", "optimizer")}


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    hidden = QUICK_MLP if quick else MLP
    start_ray()
    result = Result("train_memory", quick=quick)
    result.settings = {"model": f"mlp {hidden} on 64 features, 10 classes", "optimizer": "AdamW"}
    found = {}
    for workers in (1, 2):
        for strategy in ("ddp", "fsdp"):
            print(f"[train_memory] {strategy}, {workers} worker(s)", flush=True)
            found[f"{strategy}-{workers}"] = measure(strategy, workers, hidden)
    result.measurements = found
    total = {case: sum(parts.values()) / 2**20 for case, parts in found.items()}
    for workers in (1, 2):
        result.ratio(
            f"memory-{workers}", f"parameters + gradients + optimizer state per worker, "
            f"{workers} worker(s): fsdp vs ddp", raylane=total[f"fsdp-{workers}"],
            baseline=total[f"ddp-{workers}"], unit="MiB", goal="<= 0.55" if workers == 2 else "",
            note=", ".join(f"{case}: {parts}" for case, parts in found.items() if case.endswith(str(workers))),
        )  # fmt: skip
    result.write(out_dir)
    return result


def main(argv=None) -> int:
    return bench_main("train_memory", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

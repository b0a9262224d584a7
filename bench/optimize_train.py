"""Pruning, distillation and fine-tuning against their parent, measured in one run.

    python -m bench.optimize_train            # about 4 minutes on 2 cores
    python -m bench.optimize_train --quick    # a smoke-sized run

The parent is a Linear-heavy digits MLP (hidden sizes 256, 128) trained with Ray Train and
registered. Each method makes a registered child through its command (`optimize prune`,
`optimize distill`), and each child is compared with the parent on what a user would notice:
parameters, bytes stored, in-process latency at batch 1 and 32 (one torch thread, the median
of many forward passes), and validation accuracy on the same held-out rows. Fine-tuning is
measured as epochs to a target accuracy on the digits' parity: from a version pretrained on
the digits themselves against the same model from scratch. (bench/optimize.py, from the quantization work, measures
int8 the same way; these rows join it there.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ray.train import UserCallback

from bench.common import RESULTS_DIR, Result, bench_main, bench_storage, median, start_ray

# The parent: a Linear-heavy MLP on the digits' raw pixels from Parquet (debug preset + these).
WIDE = ["model.hidden_sizes=[256,128]", "train.lr=0.002", "data.dataset=parquet"]
STUDENT = "model.hidden_sizes=[128]"  # distillation: under 1/4 of the parent's parameters
TARGET = 0.94  # fine-tuning: the validation accuracy both runs race to


def digits_task(storage, name: str, *, modulo: int = 10) -> str:
    """The digits (raw pixels) labelled digit % modulo, as a Parquet dataset in storage; returns
    its URI. Which digit (10 classes) and its parity (modulo 2) make a related pair for
    fine-tuning: the same images, so the same rows are held out for validation in both (the
    split hashes the features), and features that tell digits apart also tell their parity."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    raw = load_digits()
    features = raw.images.reshape(len(raw.images), -1).astype(np.float32)
    columns = {
        "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), 64),
        "label": pa.array(raw.target % modulo),
    }
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buffer)
    storage.write_bytes(f"tasks/{name}/part-0.parquet", buffer.getvalue().to_pybytes())
    return storage.uri_for(f"tasks/{name}")


def latency_ms(model: torch.nn.Module, batch: int, repeats: int) -> float:
    inputs = torch.randn(batch, 64)  # the digits' 64 pixels, standardized
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model(inputs)
            times.append((time.perf_counter() - started) * 1000)
    return median(times)


def measure(registry, name: str, repeats: int) -> dict:
    """Parameters, bytes stored, latency and recorded accuracy of version 1 of `name`."""
    from workloads.checkpoint import load_model
    from workloads.models import count_parameters
    from workloads.trust import CodePolicy

    with tempfile.TemporaryDirectory() as tmp:
        directory = registry.download(name, 1, Path(tmp) / name)
        stored = sum(f.stat().st_size for f in directory.iterdir())
        model, meta = load_model(directory, policy=CodePolicy.for_loading())
    return {
        "parameters": count_parameters(model),
        "bytes": stored,
        "latency_b1_ms": latency_ms(model, 1, repeats),
        "latency_b32_ms": latency_ms(model, 32, repeats),
        "accuracy": meta["metrics"]["val_accuracy"],
    }


class History(UserCallback):
    """Rank 0's validation accuracy of every epoch, appended to a local file: the callback
    runs in the Train controller's process, on this machine."""

    def __init__(self, path: Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as log:
            log.write(f"{metrics[0]['val_accuracy']}\n")

    def accuracy(self) -> list[float]:
        return [float(line) for line in Path(self.path).read_text().split()]


def epochs_to_target(storage, *, epochs: int) -> dict:
    """Epochs until TARGET on the digits' parity: from the parent (init_from, a new 2-class
    head) vs the same model from scratch."""
    from workloads.config import load_job_config
    from workloads.train import run_training

    task = [*WIDE, f"data.path={storage.uri_for('tasks/parity')}", f"train.epochs={epochs}"]
    found = {}
    for label, extra in [("scratch", []), ("finetuned", ["train.init_from=wide:1"])]:
        with tempfile.TemporaryDirectory() as tmp:
            history = History(Path(tmp) / "history")
            config = load_job_config("debug", [*task, f"name=bench-{label}", *extra])
            run_training(config, storage, callbacks=[history], verbose=False)
            accuracy = history.accuracy()
        reached = [i + 1 for i, a in enumerate(accuracy) if a >= TARGET]
        found[label] = {"epochs": min(reached) if reached else float("nan"), "history": accuracy}
    return found


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    from workloads import optimize
    from workloads.checkpoint import open_registry
    from workloads.config import load_job_config
    from workloads.train import register_run, run_training

    torch.set_num_threads(1)
    epochs, repeats = (2, 20) if quick else (10, 200)
    result = Result("optimize_train", quick=quick)
    with bench_storage(f"optimize-{np.random.default_rng().integers(1 << 30)}") as storage:
        start_ray()
        digits_task(storage, "parity", modulo=2)
        data = f"data.path={digits_task(storage, 'digit')}"
        parent = load_job_config(
            "debug", [*WIDE, data, "name=bench-wide", f"train.epochs={epochs}"]
        )
        register_run(storage, run_training(parent, storage, verbose=False), "wide", None)
        common = ["--storage", storage.uri, "--epochs", str(max(1, epochs // 3))]
        optimize.main(["prune", "--model", "wide:1", "--sparsity", "0.5", "--structured",
                       "--register", "pruned", *common])  # fmt: skip
        optimize.main(["prune", "--model", "wide:1", "--sparsity", "0.5", "--register",
                       "sparse", *common])  # fmt: skip
        optimize.main(["distill", "--teacher", "wide:1", "--config", "debug", "--set", WIDE[2],
                       "--set", data, "--set", STUDENT, "--set", "train.lr=0.01",
                       "--register", "student", "--storage", storage.uri,
                       "--epochs", str(epochs)])  # fmt: skip
        registry = open_registry(storage)
        found = {n: measure(registry, n, repeats) for n in ("wide", "pruned", "sparse", "student")}
        found["finetune"] = epochs_to_target(storage, epochs=max(3, epochs // 3))
    result.settings = {"parent": f"debug {' '.join(WIDE)}, {epochs} epochs", "sparsity": 0.5,
                       "target": TARGET}  # fmt: skip
    result.measurements = found
    add_ratios(result, found)
    result.write(out_dir)
    return result


def add_ratios(result: Result, found: dict) -> None:
    wide = found["wide"]
    goals = {  # child -> measure -> goal
        "pruned": {"parameters": "", "bytes": "", "latency_b1_ms": "<= 1.0",
                   "latency_b32_ms": "<= 1.0", "accuracy": ">= 0.98"},
        "sparse": {"accuracy": ">= 0.98"},
        "student": {"parameters": "<= 0.25", "latency_b32_ms": "", "accuracy": ">= 0.97"},
    }  # fmt: skip
    names = {"pruned": "structured prune 50%", "sparse": "unstructured prune 50%",
             "student": "distilled student"}  # fmt: skip
    for child, measures in goals.items():
        for key, goal in measures.items():
            result.ratio(f"{child}_{key}", f"{names[child]} vs parent: {key}",
                         raylane=found[child][key], baseline=wide[key], unit="", goal=goal)  # fmt: skip
    tuned, scratch = found["finetune"]["finetuned"], found["finetune"]["scratch"]
    never = scratch["epochs"] != scratch["epochs"]  # NaN: it did not reach the target
    # A run that never got there counts as one epoch more than it had: the ratio is then an
    # upper bound, and the note says so.
    result.ratio("finetune_epochs", f"epochs to {TARGET} accuracy: fine-tuned vs scratch",
                 raylane=tuned["epochs"],
                 baseline=len(scratch["history"]) + 1 if never else scratch["epochs"],
                 unit="epochs", goal="<= 0.99",
                 note=f"scratch did not reach {TARGET} in {len(scratch['history'])} epochs"
                 if never else "")  # fmt: skip


def main(argv=None) -> int:
    return bench_main("optimize_train", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

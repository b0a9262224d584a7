"""int8 quantization against its float parent: bytes on disk, latency, accuracy.

    python -m bench.optimize            # about a minute on 2 cores; bench/results/optimize.json
    python -m bench.optimize --quick    # a smoke-sized run: the first case, 2 epochs

Each case trains a parent in this process on its preset's training split (a plain loop with
the preset's optimizer, batch size and epochs: what is measured is the model, not how it was
trained, so no Ray), registers it in a local registry (evaluated like any version), runs
`raylane optimize quantize` on it as a user would, and measures both versions:

- bytes on disk: the model's files (model.safetensors, and model.onnx for int8);
- latency: the in-process forward pass at batch 1 and 32 with one thread each (PyTorch for the
  parent, ONNX Runtime for the child), parent and child interleaved, ROUNDS rounds; the median
  is the number, the range goes in the note (workloads/comparison.py: measure_latency);
- latency against the parent exported to ONNX and run by ONNX Runtime in float: what int8
  itself buys, apart from the change of runtime;
- accuracy on the parent's validation split, the same rows for both.

Cases: `tabular-mlp` widened to 256x256 hidden units, the Linear-heavy model the targets are
about (the preset's 64x32 MLP has 4k parameters, where the graph's fixed size dominates), with
dynamic int8; `digits-cnn` as is, static (Conv int8 too, calibrated) and dynamic (Linear only).
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import RESULTS_DIR, Result, bench_main
from bench.train import train_epochs, training_set
from workloads.checkpoint import input_spec_of
from workloads.comparison import one_thread

ROUNDS = 5
# (label, preset, overrides, scheme, Linear-heavy: the size and batch-32 latency targets apply)
CASES = [
    ("tabular-mlp 256x256", "tabular-mlp", ["model.hidden_sizes=[256,256]"], "dynamic", True),
    ("digits-cnn", "digits-cnn", [], "static", False),
    ("digits-cnn", "digits-cnn", [], "dynamic", False),
]


def parent_version(
    registry, storage, preset: str, overrides: list[str], *, epochs: int | None, name: str = ""
):
    """Train the preset (`epochs`, or the preset's) in this process, register it: NAME:1."""
    from cluster.storage import Storage
    from workloads.checkpoint import build_meta, save_checkpoint
    from workloads.config import load_job_config
    from workloads.models import build_model
    from workloads.registration import register_checkpoint
    from workloads.trust import CodePolicy

    config = load_job_config(preset, [*overrides, *([f"train.epochs={epochs}"] if epochs else [])])
    spec, input_spec, info, features, labels = training_set(storage, config)
    torch.manual_seed(0)
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    train_epochs(model, features, labels, config.train, epochs=config.train.epochs)
    meta = build_meta(
        spec=spec, input_spec=input_spec, config=config.model_dump(mode="json"),
        run_name=config.name, data_fingerprint=info.fingerprint, data_uri=info.uri,
        epoch=config.train.epochs, metrics={},
    )  # fmt: skip
    name = name or f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model=model.eval(), meta=meta)
        register_checkpoint(registry, name, Storage(tmp), "", lineage={"bench": preset})
    return f"{name}:1"


def measure(registry, parent: str, scheme: str) -> dict:
    """Quantize `parent` with the command, then compare the parent and the new version (one
    load of each: the accuracy, footprint and latency come from the same comparison)."""
    from workloads.evaluate import compare_versions
    from workloads.optimize import main as optimize

    optimize(["quantize", "--model", parent, "--scheme", scheme, "--storage", registry.storage.uri])
    name, version = registry.resolve(parent)
    refs = [(name, version), (name, registry.versions(name)[-1])]
    comparison = compare_versions(registry, refs, rounds=ROUNDS, seconds=0.3)
    names, footprint = list(comparison["metrics"]), comparison["footprint"]
    return {
        "models": names,
        "bytes": [footprint[n]["bytes"] for n in names],
        "parameters": [footprint[n]["parameters"] for n in names],
        "accuracy": [comparison["metrics"][n]["accuracy"] for n in names],
        "latency_ms": [footprint[n]["latency_ms"] for n in names],
        "runtime_latency_ms": runtime_latency(registry, refs),
    }


def runtime_latency(registry, refs) -> list[dict]:
    """Latency of the parent exported to ONNX and run by ONNX Runtime in float, and of the
    int8 child, interleaved: what int8 itself buys, apart from the change of runtime."""
    from workloads.comparison import measure_latency, random_inputs
    from workloads.evaluate import load_versions
    from workloads.onnx_int8 import OnnxModule, export_graph

    parent, child = load_versions(registry, refs)
    with one_thread():  # the session takes its thread count when it is made
        example = random_inputs(input_spec_of(parent.meta), 2)
        graph = export_graph(parent.module, example)
        parent = replace(
            parent, name=f"{parent.name} (ONNX Runtime float)", module=OnnxModule(graph)
        )
    measured = measure_latency([parent, child], rounds=ROUNDS, seconds=0.3)
    return [measured[parent.name], measured[child.name]]


def add_rows(result: Result, label: str, scheme: str, heavy: bool, measured: dict) -> None:
    (parent_bytes, child_bytes), (parent_acc, child_acc) = measured["bytes"], measured["accuracy"]
    case = f"{label}, {scheme} int8 vs float parent"
    result.ratio(f"{label}-{scheme}-bytes", f"{case}: bytes on disk", raylane=child_bytes,
                 baseline=parent_bytes, unit="B", goal="<= 0.3" if heavy else "")  # fmt: skip
    for size in ("1", "32"):
        parent, child = (entry[size] for entry in measured["latency_ms"])
        spread = (f"int8 {child['min']:.3f}-{child['max']:.3f} ms, float "
                  f"{parent['min']:.3f}-{parent['max']:.3f} ms over {ROUNDS} rounds")  # fmt: skip
        result.ratio(
            f"{label}-{scheme}-latency-{size}", f"{case}: latency at batch {size} (median)",
            raylane=child["median"], baseline=parent["median"], unit="ms",
            goal="<= 0.7" if heavy and size == "32" else "", note=spread,
        )  # fmt: skip
    for size in ("1", "32"):
        parent, child = (entry[size] for entry in measured["runtime_latency_ms"])
        result.ratio(
            f"{label}-{scheme}-runtime-latency-{size}",
            f"{label}, {scheme} int8 vs the parent in ONNX Runtime float: latency at batch {size}",
            raylane=child["median"], baseline=parent["median"], unit="ms",
            note=f"int8 {child['min']:.3f}-{child['max']:.3f} ms, float "
            f"{parent['min']:.3f}-{parent['max']:.3f} ms over {ROUNDS} rounds",
        )  # fmt: skip
    change = (child_acc - parent_acc) * 100
    result.ratio(f"{label}-{scheme}-accuracy", f"{case}: validation accuracy",
                 raylane=child_acc, baseline=parent_acc, unit="", goal=">= 0.99",
                 note=f"{change:+.2f} points")  # fmt: skip


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    from cluster.storage import Storage
    from workloads.checkpoint import open_registry

    torch.set_num_threads(1)  # both runtimes get one thread (ONNX Runtime follows torch's)
    result = Result("optimize", quick=quick)
    result.settings = {"rounds": ROUNDS, "threads": 1, "cases": [c[:4] for c in CASES]}
    with tempfile.TemporaryDirectory(prefix="raylane-bench-optimize-") as tmp:
        storage = Storage(tmp)
        registry = open_registry(storage)
        parents = {}
        for label, preset, overrides, scheme, heavy in CASES[:1] if quick else CASES:
            if label not in parents:
                print(f"[optimize] training {label}", flush=True)
                parents[label] = parent_version(
                    registry, storage, preset, overrides, epochs=2 if quick else None
                )
            print(f"[optimize] {label}: {scheme} int8", flush=True)
            measured = measure(registry, parents[label], scheme)
            result.measurements[f"{label} {scheme}"] = measured
            add_rows(result, label, scheme, heavy, measured)
    result.write(out_dir)
    return result


def main(argv=None) -> int:
    return bench_main("optimize", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

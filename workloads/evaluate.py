"""Re-evaluate a checkpoint on its validation split, in this process, without Ray.

    python -m workloads.evaluate s3://raylane/runs/digits-cnn/checkpoint-epoch-0012
    python -m workloads.evaluate ./artifacts/registry/digits/versions/3

Rebuilds the model from the checkpoint's meta, reads the dataset recorded there, selects the same
validation rows as training did, and prints the metrics next to the ones recorded at
training time: a checkpoint that reproduces its numbers is a checkpoint you can trust.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from cluster.errors import run_cli
from cluster.storage import Storage
from workloads.checkpoint import input_spec_of, load_model, prepare_features, read_meta
from workloads.data import read_split
from workloads.step import classification_metrics, predict_logits
from workloads.trust import CodePolicy


def evaluate_directory(
    directory: str | Path, *, policy: CodePolicy, batch_size: int = 1024
) -> dict[str, float]:
    """Validation metrics of the checkpoint in a local directory."""
    model, meta = load_model(directory, policy=policy)
    spec = input_spec_of(meta)
    fraction = meta["config"]["data"]["validation_fraction"]
    features, labels = read_split(
        meta["data_uri"], spec, validation_fraction=fraction, split="validation"
    )
    logits = []
    for start in range(0, len(features), batch_size):
        batch = prepare_features(features[start : start + batch_size], spec)
        logits.append(predict_logits(model, torch.as_tensor(batch)).numpy())
    logits = torch.cat([torch.as_tensor(x) for x in logits]).numpy()
    metrics = classification_metrics(logits, labels, len(spec.class_names))
    return {f"val_{k}": v for k, v in metrics.items()}


def evaluate_uri(
    uri: str, *, allow_modules: Sequence[str] = ()
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics now, metrics recorded at training time) for a checkpoint at any storage URI.
    A custom model class loads only from modules the operator allowed (workloads/trust.py)."""
    storage = Storage.from_uri(uri)
    policy = CodePolicy.for_loading(storage_root=storage.local_root, extra=allow_modules)
    with tempfile.TemporaryDirectory(prefix="raylane-eval-") as tmp:
        directory = storage.download_dir("", tmp)
        recorded = read_meta(directory).get("metrics", {})
        return evaluate_directory(directory, policy=policy), recorded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workloads.evaluate",
        description="Re-evaluate a checkpoint (directory or s3:// URI) on its validation split.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory or URI")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument(
        "--allow-custom-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="let a custom model class from MODULE load (repeatable; default: none)",
    )
    args = parser.parse_args(argv)
    now, recorded = evaluate_uri(args.checkpoint, allow_modules=args.allow_custom_module)
    if args.json:
        print(json.dumps({"metrics": now, "recorded": recorded}))
        return 0
    print(f"{'metric':<14} {'now':>8} {'recorded':>9}")
    for key, value in now.items():
        print(f"{key:<14} {value:>8.4f} {recorded.get(key, float('nan')):>9.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)

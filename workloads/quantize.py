"""`raylane optimize quantize`: a registered model as int8, registered as a new version.

    raylane optimize quantize --model digits@production                # -> digits:N+1
    raylane optimize quantize --model digits:3 --scheme static --register digits-int8 \\
        --promote staging
    ray job submit --working-dir . -- python -m workloads.optimize quantize --model digits:3 \\
        --storage s3://bucket/raylane

In order, all before a version number is claimed, so a failed run registers nothing: the
parent version is loaded (a custom class only if the operator allows it), exported to ONNX,
quantized by ONNX Runtime (workloads/onnx_int8.py: `dynamic` makes Linear and LSTM/GRU weights
int8 and quantizes activations at run time; `static` makes Conv int8 too, with activation
scales calibrated on rows of the training split), written as an int8 checkpoint
(workloads/checkpoint.py), loaded back and checked against the parent. Registration then
evaluates it on the parent's validation split and registers it with lineage {parent, method,
settings}; last, the parent and the new version are compared side by side (metrics, size,
latency).

No Ray: quantizing takes seconds of CPU in this process (under `ray job submit`, the driver's).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cluster.config import add_common_args
from cluster.errors import ConfigError, DataError, run_cli
from cluster.registry import REF_FORMS, Registry, check_name
from cluster.storage import Storage
from workloads.checkpoint import (
    QUANTIZATION,
    InputSpec,
    input_spec_of,
    load_model,
    open_registry,
    prepare_features,
    save_quantized,
)
from workloads.comparison import format_comparison, random_inputs
from workloads.data import read_split
from workloads.evaluate import compare_versions, loading_policy
from workloads.onnx_int8 import SCHEMES, export_graph, int8_operators, quantize_graph, split_graph
from workloads.registration import register_checkpoint, report_line
from workloads.trust import CodePolicy, add_allow_flag

KEPT_META = ("model", "input", "config", "run_name", "data_fingerprint", "data_uri", "epoch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane optimize quantize",
        description="Post-training int8 quantization of a registered version (ONNX Runtime); "
        "the result is registered as a new version.",
    )
    parser.add_argument("--model", required=True, help=f"the parent version: {REF_FORMS}")
    parser.add_argument("--register", metavar="NAME", help="register as NAME (default: parent's)")
    parser.add_argument("--promote", metavar="ALIAS", help="then point ALIAS at the new version")
    parser.add_argument(
        "--scheme", choices=SCHEMES, default="dynamic",
        help="dynamic: int8 weights of Linear/LSTM/GRU, activations quantized per batch "
        "(default); static: Conv too, activation scales calibrated on the training split",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-rows", type=int, default=512, metavar="N",
        help="rows of the training split that calibrate --scheme static (default 512)",
    )  # fmt: skip
    add_common_args(parser, overrides=None, address=False)
    add_allow_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calibration_rows < 1:
        raise ConfigError(f"--calibration-rows must be at least 1, got {args.calibration_rows}")
    storage = Storage.from_uri(args.storage)
    storage.check()
    registry = open_registry(storage)
    name, version = registry.resolve(args.model)  # an unknown parent fails here, named
    target = args.register or name
    check_name(target)
    policy = loading_policy(registry, args.allow_custom_module)
    settings = {"scheme": args.scheme}
    if args.scheme == "static":
        settings["calibration_rows"] = args.calibration_rows
    with tempfile.TemporaryDirectory(prefix="raylane-quantize-") as tmp:
        parent = registry.download(name, version, Path(tmp) / "parent")
        settings |= quantize_checkpoint(parent, Path(tmp) / "int8", policy=policy, **settings)
        lineage = {"parent": f"{name}:{version}", "method": "quantize", "settings": settings}
        record = register_checkpoint(
            registry, target, Storage(str(Path(tmp) / "int8")), "", alias=args.promote,
            lineage={**lineage, "checkpoint": None},
        )  # fmt: skip
    shown = f" (now {target}@{args.promote})" if args.promote else ""
    print(
        f"registered: {target}:{record['version']}, {args.scheme} int8 of {name}:{version}{shown}"
    )
    print(report_line(record))
    print_comparison(registry, [(name, version), (target, record["version"])])
    return 0


def quantize_checkpoint(
    source: Path, target: Path, *, policy: CodePolicy, scheme: str, calibration_rows: int = 0
) -> dict:
    """Write the int8 checkpoint of the float checkpoint in `source` to `target`; returns the
    settings worth recording (the int8 operators made)."""
    module, meta = load_model(source, policy=policy)
    if QUANTIZATION in meta:
        raise ConfigError(
            f"this version is already int8 ({meta[QUANTIZATION].get('scheme')}): quantize its "
            "float parent, which `raylane models show` names under lineage.parent"
        )
    spec = input_spec_of(meta)
    calibration = calibration_set(meta, spec, calibration_rows) if scheme == "static" else None
    graph = quantize_graph(
        export_graph(module, random_inputs(spec, 2)), scheme=scheme, calibration=calibration
    )
    operators = collections.Counter(int8_operators(graph))
    if not operators:
        family = (meta.get("model") or {}).get("family")
        raise DataError(
            f"nothing to quantize in this {family} model: int8 applies to Linear, LSTM/GRU "
            "(dynamic) and Conv (static) layers; try --scheme static, or keep the float version"
        )
    skeleton, tensors = split_graph(graph)
    child = {key: meta[key] for key in KEPT_META if key in meta}
    runtime = f"onnxruntime {_version('onnxruntime')}"
    child |= {"metrics": {}, QUANTIZATION: {"scheme": scheme, "runtime": runtime}}
    save_quantized(target, graph=skeleton, tensors=tensors, meta=child)
    _check_loads(target, module, spec)
    return {"int8_operators": dict(operators)}


def calibration_set(meta: dict, spec: InputSpec, rows: int) -> np.ndarray:
    """Up to `rows` rows of the parent's training split, prepared as the model sees them."""
    fraction = ((meta.get("config") or {}).get("data") or {}).get("validation_fraction")
    if not meta.get("data_uri") or not fraction:
        raise ConfigError(
            "--scheme static calibrates on the training split, which this version does not "
            "record (data_uri in its meta.json): use --scheme dynamic"
        )
    features, _ = read_split(meta["data_uri"], spec, validation_fraction=fraction, split="train")
    picked = np.random.default_rng(0).permutation(len(features))[:rows]
    return prepare_features(features[np.sort(picked)], spec)


def _check_loads(directory: Path, parent: torch.nn.Module, spec: InputSpec) -> None:
    """The stored int8 model must load and answer like its parent does, shape for shape."""
    int8, _ = load_model(directory, policy=CodePolicy.for_loading())
    batch = random_inputs(spec, 4, seed=1)
    with torch.inference_mode():
        expected, got = parent(batch), int8(batch)
    if got.shape != expected.shape or not torch.isfinite(got).all():
        raise DataError(f"the int8 model answers {tuple(got.shape)}, its parent {expected.shape}")


def print_comparison(registry: Registry, refs: list[tuple[str, int]]) -> None:
    """The parent and its optimized child side by side, or why they cannot be compared."""
    try:
        print("\n" + format_comparison(compare_versions(registry, refs)))
    except DataError as error:  # no recorded validation data: nothing to compare on
        print(f"not compared: {error}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    run_cli(main)

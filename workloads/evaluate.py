"""Evaluate checkpoints and model versions: reports and comparisons.

    raylane models evaluate digits:3 [--data s3://bucket/new.parquet] [--inference ray]
    raylane models compare digits:3 digits:4
    python -m workloads.evaluate s3://raylane/runs/digits-cnn/checkpoint-epoch-0012
    python -m workloads.evaluate ./artifacts/registry/digits/versions/3

    evaluated = evaluate_version(registry, "digits", 3, data=None)
    comparison = compare_versions(registry, [("digits", 3), ("digits", 4)])
    evaluation = evaluate_checkpoint(directory, policy=policy)   # registration, before a number
    store_report(registry, "digits", 4, evaluation)

A version is evaluated when it is registered (workloads/registration.py), on its own validation
split (the rows its training held out, picked by the same row hash), and on demand on any
Parquet with the same columns. The report (workloads/report.py) goes to `Registry.report_key(name, version, label)`:
`registry/<name>/reports/<n>/validation/` for the validation split, `.../data-<hash>/` for
other data. Comparisons predict every version on the same rows in one pass and test the
accuracy difference (workloads/significance.py).

`python -m workloads.evaluate CHECKPOINT` re-evaluates any checkpoint directory or URI and prints
its metrics next to the ones recorded at training time: a checkpoint that reproduces its
numbers is one you can trust.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.errors import DataError, run_cli
from cluster.registry import Registry
from cluster.storage import Storage, dump_json
from workloads.checkpoint import load_model, model_footprint, read_meta
from workloads.comparison import measure_latency, one_thread
from workloads.data import read_split
from workloads.inference import Inference, Model, Rows, logits, predict
from workloads.report import REPORT_JSON, build_report, write_report
from workloads.significance import paired_accuracy
from workloads.step import classification_metrics
from workloads.tracking import Tracking, flatten
from workloads.trust import CodePolicy, add_allow_flag


def load_versions(
    registry: Registry, refs: Sequence[tuple[str, int]], *, allow_modules: Sequence[str] = ()
) -> list[Model]:
    """The models of registered versions, loaded in this process. A custom model class loads
    only from modules the operator allowed (workloads/trust.py)."""
    policy = loading_policy(registry, allow_modules)
    models = []
    with tempfile.TemporaryDirectory(prefix="raylane-eval-") as tmp:
        for name, version in refs:
            directory = registry.download(name, version, Path(tmp) / f"{name}-{version}")
            module, meta = load_model(directory, policy=policy)
            footprint = model_footprint(directory)
            models.append(Model(f"{name}:{version}", module, meta, policy, footprint))
    return models


def loading_policy(registry: Registry, allow_modules: Sequence[str] = ()) -> CodePolicy:
    return CodePolicy.for_loading(storage_root=registry.storage.local_root, extra=allow_modules)


@dataclass(frozen=True)
class Evaluation:
    """A model's predictions on some rows: what a report is made of."""

    model: Model
    rows: Rows
    probabilities: np.ndarray
    labels: np.ndarray
    inference: str  # "local" | "ray"


def evaluate_version(
    registry: Registry,
    name: str,
    version: int,
    *,
    data: str | None = None,
    inference: Inference = "auto",
    address: str | None = None,
    tracking: Tracking | None = None,
    allow_modules: Sequence[str] = (),
) -> dict:
    """Evaluate a version on its validation split (or every row of `data`) and store the report.
    Returns {"report": the JSON, "uri": where it is stored}."""
    [model] = load_versions(registry, [(name, version)], allow_modules=allow_modules)
    rows = Rows.everything(data) if data else Rows.validation_of(model)
    [probabilities], labels, how = predict([model], rows, inference=inference, address=address)
    evaluation = Evaluation(model, rows, probabilities, labels, how)
    return store_report(registry, name, version, evaluation, tracking=tracking)


def evaluate_checkpoint(directory: str | Path, *, policy: CodePolicy) -> Evaluation:
    """A local checkpoint's predictions on its own validation split, in this process: what
    registration (workloads/registration.py) stores as a new version's first report."""
    module, meta = load_model(directory, policy=policy)
    model = Model(f"the checkpoint in {directory}", module, meta, policy)
    rows = Rows.validation_of(model)
    [probabilities], labels, how = predict([model], rows)
    return Evaluation(model, rows, probabilities, labels, how)


def store_report(
    registry: Registry,
    name: str,
    version: int,
    evaluation: Evaluation,
    *,
    tracking: Tracking | None = None,
    kind: str = "evaluate",
) -> dict:
    """Write the report of `evaluation` as a report of version `name:version`; with `tracking`,
    also an MLflow run of kind `kind`. Returns {"report": the JSON, "uri": where it is}."""
    rows = evaluation.rows
    key = registry.report_key(name, version, rows.label)
    about = {
        "model": f"{name}:{version}",
        "model_uri": registry.storage.uri_for(registry.version_key(name, version)),
        "data": {
            "uri": rows.uri,
            "split": rows.split,
            "description": rows.description,
            "validation_fraction": rows.validation_fraction,
        },
        "inference": evaluation.inference,
    }
    probabilities, labels = evaluation.probabilities, evaluation.labels
    class_names = evaluation.model.spec.class_names
    report = build_report(probabilities, labels, class_names=class_names, about=about)
    uri = registry.storage.uri_for(key)
    with tempfile.TemporaryDirectory(prefix="raylane-report-") as tmp:
        write_report(tmp, report, probabilities, labels)
        registry.storage.upload_dir(tmp, key, last=(REPORT_JSON,))
        if tracking is not None:
            track_version(tracking, registry, name, version, kind=kind, report=report,
                          report_dir=tmp, report_uri=uri)  # fmt: skip
    return {"report": report, "uri": uri}


def track_version(
    tracking: Tracking, registry: Registry, name: str, version: int, *, kind: str,
    report: dict | None = None, report_dir: str | None = None, report_uri: str | None = None,
) -> None:  # fmt: skip
    """One MLflow run: the version (meta, lineage, URI) as an artifact, and the report's metrics
    and files when there is a report."""
    described = registry.describe(name, version)
    lineage = {k: v for k, v in described["lineage"].items() if k not in ("config", "metrics")}
    tags = {"raylane.kind": kind, "raylane.model": name, "raylane.version": version}
    if report_uri:
        tags["raylane.report"] = report_uri
    run = tracking.start_run(
        f"{name}:{version}", params={"version_uri": described["uri"], **flatten(lineage)}, tags=tags
    )
    if report is not None:
        run.log_metrics({k: v for k, v in report["metrics"].items() if v is not None})
        run.log_artifacts(report_dir, "evaluation")
    with tempfile.TemporaryDirectory(prefix="raylane-version-") as tmp:
        (Path(tmp) / "version.json").write_bytes(dump_json(described))
        run.log_artifacts(tmp, "registry")
    run.end()


def compare_versions(
    registry: Registry,
    refs: Sequence[tuple[str, int]],
    *,
    data: str | None = None,
    inference: Inference = "auto",
    address: str | None = None,
    allow_modules: Sequence[str] = (),
    costs: bool = True,
    rounds: int = 3,
    seconds: float = 0.1,
) -> dict:
    """Every version's metrics on the same rows (the first version's validation split, or every
    row of `data`), and each later version's accuracy against the first's, paired. With
    `costs`, also each one's parameters, bytes on disk and in-process latency at batch 1, 32
    (`rounds` interleaved measurements of about `seconds` each: workloads/comparison.py)."""
    with one_thread() if costs else contextlib.nullcontext():  # as latency is measured
        models = load_versions(registry, refs, allow_modules=allow_modules)
    rows = Rows.everything(data) if data else Rows.validation_of(models[0])
    probabilities, labels, how = predict(models, rows, inference=inference, address=address)
    metrics = {
        model.name: build_report(p, labels, class_names=model.spec.class_names, about={})["metrics"]
        for model, p in zip(models, probabilities, strict=True)
    }
    pairs = [
        paired_accuracy(
            labels, probabilities[0].argmax(1), p.argmax(1), names=(models[0].name, model.name)
        )
        for model, p in zip(models[1:], probabilities[1:], strict=True)
    ]
    footprint = None
    if costs:
        latency = measure_latency(models, rounds=rounds, seconds=seconds)
        footprint = {m.name: {**m.footprint, "latency_ms": latency[m.name]} for m in models}
    return {
        "rows": len(labels), "data": rows.description, "inference": how, "metrics": metrics,
        "comparisons": pairs, "notes": _different_data(models, rows), "footprint": footprint,
    }  # fmt: skip


def _different_data(models: list[Model], rows: Rows) -> list[str]:
    """Versions whose own validation split is not these rows: some rows may be in their
    training data, which flatters them."""
    if rows.validation_fraction is None:
        return []
    notes = []
    for model in models[1:]:
        try:
            own = Rows.validation_of(model)
        except DataError:  # records no training data: nothing to warn about
            continue
        if (own.uri, own.validation_fraction) != (rows.uri, rows.validation_fraction):
            notes.append(
                f"{model.name} was validated on {own.description}: some of these rows may be in "
                "its training data"
            )
    return notes


# ---------------------------------------------------------------------- any checkpoint


def evaluate_directory(directory: str | Path, *, policy: CodePolicy) -> dict[str, float]:
    """Validation metrics (the training metrics' definitions) of a local checkpoint directory."""
    module, meta = load_model(directory, policy=policy)
    model = Model(str(directory), module, meta, policy)
    rows = Rows.validation_of(model)
    features, labels = read_split(
        rows.uri, model.spec, validation_fraction=rows.validation_fraction, split="validation"
    )
    scores = logits(module, model.spec, features)
    metrics = classification_metrics(scores, labels, len(model.spec.class_names))
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
    add_allow_flag(parser)
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

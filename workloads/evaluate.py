"""Evaluate checkpoints and model versions: reports, comparisons, and registration with a report.

    raylane models evaluate digits:3 [--data s3://bucket/new.parquet] [--inference ray]
    raylane models compare digits:3 digits:4
    python -m workloads.evaluate s3://raylane/runs/digits-cnn/checkpoint-epoch-0012
    python -m workloads.evaluate ./artifacts/registry/digits/versions/3

    registered = register_version(registry, "digits", checkpoint_dir, lineage={...})
    evaluated = evaluate_version(registry, "digits", 3, data=None)
    comparison = compare_versions(registry, [("digits", 3), ("digits", 4)])

A version is evaluated when it is registered, on its own validation split (the rows its
training held out, picked by the same row hash), and on demand on any Parquet with the same
columns. The report (workloads/report.py) goes to `Registry.report_key(name, version, label)`:
`registry/<name>/reports/<n>/validation/` for the validation split, `.../data-<hash>/` for
other data. Comparisons predict every version on the same rows in one pass and test the
accuracy difference (workloads/significance.py).

`python -m workloads.evaluate CHECKPOINT` re-evaluates any checkpoint directory or URI and prints
its metrics next to the ones recorded at training time: a checkpoint that reproduces its
numbers is one you can trust.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cluster.errors import DataError, run_cli
from cluster.registry import Registry
from cluster.storage import Storage, dump_json
from workloads.checkpoint import load_model, read_meta
from workloads.data import read_split
from workloads.inference import Inference, Model, Rows, logits, predict
from workloads.report import REPORT_JSON, build_report, write_report
from workloads.significance import paired_accuracy
from workloads.step import classification_metrics
from workloads.tracking import Tracking, flatten
from workloads.trust import CodePolicy


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
            models.append(Model(f"{name}:{version}", module, meta, policy))
    return models


def loading_policy(registry: Registry, allow_modules: Sequence[str] = ()) -> CodePolicy:
    return CodePolicy.for_loading(storage_root=registry.storage.local_root, extra=allow_modules)


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
    return _store_report(
        registry, (name, version), model, rows, probabilities, labels, inference=how,
        tracking=tracking,
    )  # fmt: skip


def register_version(
    registry: Registry,
    name: str,
    directory: str | Path,
    *,
    lineage: dict,
    tracking: Tracking | None = None,
) -> dict:
    """Register a local checkpoint directory as a new version, with its evaluation report.

    The model is evaluated first, so a checkpoint whose validation rows cannot be read is
    refused before it takes a version number. Returns {"name", "version", "report_uri",
    "metrics"}.
    """
    policy = loading_policy(registry)
    module, meta = load_model(directory, policy=policy)
    model = Model(f"{name} (unregistered)", module, meta, policy)
    rows = Rows.validation_of(model)
    [probabilities], labels, how = predict([model], rows)
    version = registry.register(name, directory, lineage=lineage)
    model = Model(f"{name}:{version}", module, meta, policy)
    stored = _store_report(
        registry, (name, version), model, rows, probabilities, labels, inference=how,
        tracking=tracking, kind="register",
    )  # fmt: skip
    metrics = stored["report"]["metrics"]
    return {"name": name, "version": version, "report_uri": stored["uri"], "metrics": metrics}


def _store_report(registry, ref, model, rows, probabilities, labels, *, inference, tracking,
                  kind="evaluate") -> dict:  # fmt: skip
    """Write the report of `probabilities` for version `ref` = (name, version) to storage."""
    key = registry.report_key(*ref, rows.label)
    about = {
        "model": model.name,
        "model_uri": registry.storage.uri_for(registry.version_key(*ref)),
        "data": {
            "uri": rows.uri,
            "split": rows.split,
            "description": rows.description,
            "validation_fraction": rows.validation_fraction,
        },  # fmt: skip
        "inference": inference,
    }
    report = build_report(probabilities, labels, class_names=model.spec.class_names, about=about)
    uri = registry.storage.uri_for(key)
    with tempfile.TemporaryDirectory(prefix="raylane-report-") as tmp:
        write_report(tmp, report, probabilities, labels)
        registry.storage.upload_dir(tmp, key, last=(REPORT_JSON,))
        if tracking is not None:
            _track(tracking, registry, ref, report, report_dir=tmp, uri=uri, kind=kind)
    return {"report": report, "uri": uri}


def _track(tracking: Tracking, registry, ref, report, *, report_dir, uri, kind) -> None:
    """One MLflow run with the report's metrics, the report and the version as artifacts."""
    name, version = ref
    described = registry.describe(name, version)
    lineage = {k: v for k, v in described["lineage"].items() if k not in ("config", "metrics")}
    run = tracking.start_run(
        f"{name}:{version}",
        params={"version_uri": described["uri"], **flatten(lineage)},
        tags={"raylane.kind": kind, "raylane.model": name, "raylane.version": version,
              "raylane.report": uri},
    )  # fmt: skip
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
) -> dict:
    """Every version's metrics on the same rows (the first version's validation split, or every
    row of `data`), and each later version's accuracy against the first's, paired."""
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
    return {
        "rows": len(labels), "data": rows.description, "inference": how, "metrics": metrics,
        "comparisons": pairs, "notes": _different_data(models, rows),
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

"""Registering a checkpoint as a model version: one path for train, sweep and the CLI.

    raylane train --config tabular-mlp --register wine --promote production
    raylane sweep --config digits-sweep --register digits
    raylane models register wine s3://raylane/runs/wine/checkpoint-epoch-0007

    record = register_checkpoint(registry, "wine", storage, key, source={"run": "wine"})

The checkpoint is downloaded and checked against the contract (workloads/checkpoint.py: a
readable meta.json of this format, a usable input spec, a model section, weights that parse)
before a version number is claimed, so a wrong URI never burns a number. Nothing is imported
to check it: a custom model class is code, and registering must not run it. The lineage says
where the version came from (`source`: the run, or the sweep and trial) plus what the
checkpoint's meta records (config, metrics, epoch, data).

Then the model is evaluated on its own validation split (workloads/evaluate.py), still before
a number is claimed, and the report is stored beside the new version. Building the model to
evaluate it follows the operator's loading policy (workloads/trust.py), so a custom class that
is not allowed is not imported: such a version, or one whose checkpoint records no training
data, is registered without a report, and the record says why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cluster.errors import DataError, RaylaneError, first_line
from cluster.registry import Registry
from cluster.storage import Storage
from workloads.checkpoint import input_spec_of, load_weights, read_meta
from workloads.evaluate import (
    Evaluation,
    evaluate_checkpoint,
    loading_policy,
    store_report,
    track_version,
)
from workloads.report import REPORT_HTML
from workloads.tracking import Tracking


def check_checkpoint(directory: str | Path) -> dict:
    """The meta of a local checkpoint directory that keeps the contract, else a DataError."""
    meta = read_meta(directory)
    input_spec_of(meta)
    if not isinstance(meta.get("model"), dict) or "family" not in meta["model"]:
        raise DataError(f"{directory}: meta.json has no 'model' section naming a family")
    try:
        load_weights(directory)
    except Exception as error:  # safetensors raises its own types for a bad or missing file
        raise DataError(f"{directory}: the weights do not load ({first_line(error)})") from None
    return meta


def register_checkpoint(
    registry: Registry,
    name: str,
    source: Storage,
    key: str,
    *,
    lineage: dict,
    alias: str | None = None,
    tracking: Tracking | None = None,
) -> dict:
    """Check and evaluate the checkpoint at `key` in `source`, register it as a new version of
    `name` with its report, optionally point `alias` at it. Returns {"name", "version", "alias",
    "epoch", "report_uri", "metrics", "report_note"} (a note, and no URI, without a report)."""
    with tempfile.TemporaryDirectory(prefix="raylane-register-") as tmp:
        local = source.download_dir(key, Path(tmp) / "checkpoint")
        meta = check_checkpoint(local)
        evaluation, note = _evaluate(local, registry)
        recorded = {
            "checkpoint": source.uri_for(key),
            "epoch": meta.get("epoch"),
            "run_name": meta.get("run_name"),
            "config": meta.get("config"),
            "metrics": meta.get("metrics"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "data_uri": meta.get("data_uri"),
        }
        # A fine-tuned, pruned or distilled checkpoint names its parent (workloads/recipe.py).
        derived = meta.get("lineage") if isinstance(meta.get("lineage"), dict) else {}
        version = registry.register(name, local, lineage={**recorded, **derived, **lineage})
    record = {"name": name, "version": version, "alias": alias, "epoch": meta.get("epoch"),
              "report_uri": None, "metrics": None, "report_note": note}  # fmt: skip
    if evaluation is not None:
        stored = store_report(
            registry, name, version, evaluation, tracking=tracking, kind="register"
        )
        record.update(report_uri=stored["uri"], metrics=stored["report"]["metrics"])
    elif tracking is not None:
        track_version(tracking, registry, name, version, kind="register")
    if alias:
        registry.promote(name, alias, version)
    return record


def _evaluate(directory: Path, registry: Registry) -> tuple[Evaluation | None, str | None]:
    """The checkpoint's evaluation on its validation split, or why there is none."""
    try:
        return evaluate_checkpoint(directory, policy=loading_policy(registry)), None
    except RaylaneError as error:  # no recorded data, a custom class not allowed, data gone
        return None, str(error)


def report_line(record: dict) -> str:
    """Where the new version's report is, or why it has none: printed after registering."""
    if record["report_uri"]:
        return f"evaluation: {record['report_uri']}/{REPORT_HTML}"
    ref = f"{record['name']}:{record['version']}"
    return f"not evaluated: {record['report_note']} (once fixed: raylane models evaluate {ref})"

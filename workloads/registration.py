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
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cluster.errors import DataError, first_line
from cluster.registry import Registry
from cluster.storage import Storage
from workloads.checkpoint import input_spec_of, load_weights, read_meta


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
) -> dict:
    """Check the checkpoint at `key` in `source`, register it as a new version of `name`,
    optionally point `alias` at it. Returns {"name", "version", "alias", "epoch"}."""
    with tempfile.TemporaryDirectory(prefix="raylane-register-") as tmp:
        local = source.download_dir(key, Path(tmp) / "checkpoint")
        meta = check_checkpoint(local)
        recorded = {
            "checkpoint": source.uri_for(key),
            "epoch": meta.get("epoch"),
            "run_name": meta.get("run_name"),
            "config": meta.get("config"),
            "metrics": meta.get("metrics"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "data_uri": meta.get("data_uri"),
        }
        version = registry.register(name, local, lineage={**recorded, **lineage})
    if alias:
        registry.promote(name, alias, version)
    return {"name": name, "version": version, "alias": alias, "epoch": meta.get("epoch")}

"""`raylane models register NAME CHECKPOINT_URI`: the contract is checked before a version is
claimed, and the lineage records where the version came from.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_register.py -q
"""

from __future__ import annotations

import json

import pytest
from helpers import digits_checkpoint

from cluster.errors import DataError, NotFoundError
from raylane import models as models_cli
from workloads.checkpoint import load_weights, meta_key, open_registry, read_meta, save_checkpoint


def register(storage, *args: str) -> int:
    return models_cli.main(["register", *args, "--storage", storage.uri])


def test_a_checkpoint_directory_registers_with_its_lineage(local_storage, tmp_path, capsys):
    directory = digits_checkpoint(tmp_path / "ckpt", seed=1, steps=2)
    assert register(local_storage, "digits", str(directory), "--promote", "staging") == 0
    assert "registered: digits:1" in capsys.readouterr().out
    registry = open_registry(local_storage)
    assert registry.resolve("digits@staging") == ("digits", 1)
    lineage = registry.describe("digits", 1)["lineage"]
    assert lineage["run_name"] == "test-digits-1" and lineage["epoch"] == 2
    assert lineage["registered_from"].endswith("ckpt")


def test_a_broken_checkpoint_claims_no_version(local_storage, tmp_path):
    directory = digits_checkpoint(tmp_path / "ckpt", seed=1, steps=1)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DataError, match="checkpoint format 99"):
        register(local_storage, "digits", str(directory))
    with pytest.raises(NotFoundError, match="is empty or does not exist"):
        register(local_storage, "digits", str(tmp_path / "nothing"))
    (directory / "meta.json").write_text(json.dumps(meta))
    assert register(local_storage, "digits", str(directory)) == 0
    assert open_registry(local_storage).versions("digits") == [1]  # no number burnt
    assert local_storage.exists(meta_key(open_registry(local_storage).version_key("digits", 1)))


def test_show_says_which_learning_rate_is_configured_and_which_is_scheduled(
    local_storage, tmp_path, capsys
):
    source = digits_checkpoint(tmp_path / "source", seed=1, steps=2)
    meta = read_meta(source) | {
        "epoch": 10,
        "config": {"train": {"lr": 0.005, "scheduler": "cosine"}},
    }
    meta["metrics"] = {"val_accuracy": 0.9, "lr": 0.00025}
    directory = save_checkpoint(
        tmp_path / "ckpt", model=None, weights=load_weights(source), meta=meta
    )
    assert register(local_storage, "digits", str(directory)) == 0
    capsys.readouterr()
    assert models_cli.main(["show", "digits:1", "--storage", local_storage.uri]) == 0
    shown = capsys.readouterr().out
    assert (
        "learning rate: configured 0.005 (train.lr, the peak of a cosine schedule); "
        "scheduled 0.00025 at epoch 10" in shown
    )
    assert "metrics (at epoch 10):" in shown and "val_accuracy" in shown
    assert not any(line.split()[:1] == ["lr"] for line in shown.splitlines())

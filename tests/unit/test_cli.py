"""The `raylane` command as a user runs it: help, version, one-line errors, data preparation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RAYLANE = str(Path(sys.executable).parent / "raylane")


def raylane(*args: str, env: dict | None = None, timeout: int = 120):
    return subprocess.run(
        [RAYLANE, *args], capture_output=True, text=True, timeout=timeout, env=env or os.environ
    )


def test_version_is_the_installed_one():
    result = raylane("--version")
    assert result.returncode == 0 and result.stdout.startswith("raylane 0.")


def test_help_lists_every_command():
    result = raylane("--help")
    assert result.returncode == 0
    for command in ("storage", "data", "train", "sweep", "models", "serve", "predict", "pipeline"):
        assert command in result.stdout
    assert "--set KEY=VALUE" in raylane("train", "--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "nope"], "config 'nope' not found"),
        (["train", "--set", "train.epochs=-1", "--print-config"], "train.epochs: Input should be"),
        (["sweep", "--promote", "production"], "--promote needs --register NAME"),
        (["models", "--storage", "gs://x", "list"], "unsupported storage URI 'gs://x'"),
        (["models", "list", "--storage", "gs://x"], "unsupported storage URI 'gs://x'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["storage", "env", "--dir", "/nonexistent/raylane-s3"], "no S3 server is running from"),
    ],
)
def test_user_errors_are_one_line_without_a_traceback(args, message):
    result = raylane(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_data_prepare_writes_parquet_and_a_manifest(tmp_path):
    result = raylane("data", "prepare", "digits", "--storage", str(tmp_path / "art"))
    assert result.returncode == 0, result.stderr
    assert '"rows": 1797' in result.stdout
    files = sorted(p.name for p in (tmp_path / "art" / "datasets" / "digits").iterdir())
    assert files == ["dataset.json", "part-00000.parquet"]

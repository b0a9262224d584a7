"""The `raylane` command as a user runs it: help, one-line errors, the local S3 server's life."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.s3server import free_port

RAYLANE = str(Path(sys.executable).parent / "raylane")


def raylane(*args: str, env: dict | None = None, timeout: int = 120):
    return subprocess.run(
        [RAYLANE, *args], capture_output=True, text=True, timeout=timeout, env=env or os.environ
    )


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
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_without_a_traceback(args, message):
    result = raylane(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_storage_up_is_idempotent_and_down_stops_only_its_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    where = ["--dir", str(tmp_path / "s3"), "--port", str(free_port())]
    try:
        first = raylane("storage", "up", *where, env=env)
        assert first.returncode == 0, first.stderr
        assert "started at http://127.0.0.1:" in first.stdout
        again = raylane("storage", "up", *where, env=env)
        assert "already running" in again.stdout
        exports = raylane("storage", "env", *where, env=env).stdout
        assert "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:" in exports
        assert "export RAYLANE_STORAGE=s3://raylane" in exports
        assert raylane("storage", "status", *where, env=env).returncode == 0
    finally:
        down = raylane("storage", "down", *where, env=env)
    assert "stopped" in down.stdout
    assert raylane("storage", "status", *where, env=env).returncode == 1


def test_data_prepare_writes_parquet_and_a_manifest(tmp_path):
    result = raylane("data", "prepare", "digits", "--storage", str(tmp_path / "art"))
    assert result.returncode == 0, result.stderr
    assert '"rows": 1797' in result.stdout
    files = sorted(p.name for p in (tmp_path / "art" / "datasets" / "digits").iterdir())
    assert files == ["dataset.json", "part-00000.parquet"]

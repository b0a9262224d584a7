"""`raylane storage up/env/status/down`: the local SeaweedFS server's life, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cluster.s3server import free_port

RAYLANE = str(Path(sys.executable).parent / "raylane")


def raylane(*args: str, env: dict):
    return subprocess.run([RAYLANE, *args], capture_output=True, text=True, timeout=120, env=env)


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

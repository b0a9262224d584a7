"""The sweep summary's plot of each hyperparameter against the final metric: one panel per
searched parameter, in storage and locally. No Ray: the rows are what `summary_rows` makes."""

from __future__ import annotations

import matplotlib.image

from tune.config import load_sweep_config
from tune.report import plot_params


def row(trial: str, final: float | None, status: str, **params) -> dict:
    return {"trial": trial, "params": params, "final": final, "status": status}


def test_one_panel_per_parameter_in_storage_and_locally(local_storage, tmp_path):
    sweep = load_sweep_config("digits-sweep")  # four parameters, one of them a choice
    rows = [
        row(f"t{i}", 0.9 + i / 100, "stopped early" if i % 2 else "completed",
            **{"train.lr": 10 ** -(2 + i / 4), "train.batch_size": [32, 64][i % 2],
               "train.weight_decay": 1e-4, "model.dropout": i / 20})
        for i in range(4)
    ] + [row("t9", None, "errored")]  # fmt: skip

    uri = plot_params(rows, sweep, local_storage, str(tmp_path))

    assert uri == local_storage.uri_for("sweeps/digits-sweep/params.png")
    assert local_storage.exists("sweeps/digits-sweep/params.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "digits-sweep-params.png").shape
    assert width > 3 * height  # four panels side by side


def test_no_plot_when_no_trial_reported(local_storage, tmp_path):
    sweep = load_sweep_config("debug-sweep")
    assert plot_params([row("t1", None, "errored")], sweep, local_storage, str(tmp_path)) is None

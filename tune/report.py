"""What a person looks at after a sweep: a table sorted by the metric, a JSON summary, a plot of
each trial's metric per epoch (early-stopped trials end early, marked with an x), and a plot of
each hyperparameter against the trials' final metric, one panel per parameter.

    rows = summary_rows(results, sweep, storage)
    plot_trials(results, sweep, storage, plot_dir)     # <storage>/sweeps/<name>/trials.png
    plot_params(rows, sweep, storage, plot_dir)        # <storage>/sweeps/<name>/params.png
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from cluster.storage import Storage
from cluster.text import format_table as aligned
from workloads.checkpoint import meta_key
from workloads.registration import report_line


def summary_rows(results, sweep, storage: Storage) -> list[dict]:
    """One row per trial, best first: params, epochs trained, status, best checkpointed metric."""
    max_epochs = None
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        row = {
            "trial": (result.metrics or {}).get("trial_id") or Path(result.path).name,
            "params": {k: _short(v) for k, v in (result.config or {}).items()},
            "epochs": 0,
            "metric": None,
            "val_loss": None,
            "epoch": None,
            "checkpoint_key": None,
            "status": "errored" if result.error is not None else "completed",
            "final": None,  # the metric at the last epoch the trial reported
        }
        if frame is not None and len(frame) and sweep.metric in frame:
            row["epochs"] = int(frame["epoch"].max())
            row["final"] = float(frame[sweep.metric].iloc[-1])
            best = _best_checkpointed(frame, sweep, storage)
            if best is not None:
                row["metric"], row["val_loss"], row["epoch"], row["checkpoint_key"] = best
        rows.append(row)
        max_epochs = max(max_epochs or 0, row["epochs"])
    for row in rows:
        if row["status"] == "completed" and row["epochs"] < (max_epochs or 0):
            row["status"] = "stopped early"
    rows.sort(key=lambda r: (r["metric"] is None, *rank_key(r, sweep.mode)))
    return rows


def rank_key(row, mode: str) -> tuple[float, float, float]:
    """Sort key, best first: the metric, then the lower validation loss, then the later epoch.

    A metric saturates on easy data (every epoch at accuracy 1.0); without the tie-breaks the
    first epoch to reach it would win, which is rarely the best-fitted model."""
    sign = -1 if mode == "max" else 1
    metric, loss = _number(row["metric"]), _number(row.get("val_loss"), default=math.inf)
    return sign * metric, loss, -_number(row["epoch"])


def _number(value, default: float = 0.0) -> float:
    return default if value is None or not math.isfinite(float(value)) else float(value)


def _best_checkpointed(frame, sweep, storage: Storage):
    """(metric, val_loss, epoch, storage key) of the best epoch (by `rank_key`) whose
    checkpoint is still in storage."""
    if "checkpoint_path" not in frame:
        return None
    candidates = []
    for _, row in frame[frame["checkpoint_path"].notna()].iterrows():
        loss = row.get("val_loss")
        entry = {"metric": row[sweep.metric], "val_loss": loss, "epoch": int(row["epoch"])}
        candidates.append((rank_key(entry, sweep.mode), entry, row["checkpoint_path"]))
    for _, entry, path in sorted(candidates, key=lambda c: c[0]):
        key = storage.key_from_arrow_path(path)
        if storage.exists(meta_key(key)):  # top-k retention may have removed others
            loss = None if entry["val_loss"] is None else float(entry["val_loss"])
            return float(entry["metric"]), loss, entry["epoch"], key
    return None


def _short(value):
    return round(value, 6) if isinstance(value, float) else value


def format_table(result, sweep) -> str:
    """An aligned text table, best trial first."""
    params = list(sweep.space)
    header = ["#", "trial", *(p.split(".")[-1] for p in params), "epochs", "status", sweep.metric]
    lines = []
    for rank, row in enumerate(result.rows, 1):
        metric = "-" if row["metric"] is None else f"{row['metric']:.4f}"
        values = [_fmt(row["params"].get(p)) for p in params]
        lines.append([str(rank), row["trial"], *values, str(row["epochs"]), row["status"], metric])
    text = [aligned(header, lines, rule=True)]
    trained = sum(row["epochs"] for row in result.rows)
    text.append(
        f"\n{len(result.rows)} trials, {trained} epochs trained "
        f"(of {len(result.rows) * max((r['epochs'] for r in result.rows), default=0)} without "
        f"early stopping); best {sweep.metric} {result.best['metric']:.4f} "
        f"({result.best['trial']}, epoch {result.best['epoch']})"
    )
    for error in result.errors:
        text.append(f"failed: {error}")
    if result.plot_uri:
        text.append(f"plot: {result.plot_uri}")
    if result.params_plot_uri:
        text.append(f"parameters: {result.params_plot_uri}")
    if result.registered:
        reg = result.registered
        text.append(
            f"registered: {reg['name']}:{reg['version']} = {result.best['trial']} epoch "
            f"{reg.get('epoch')}" + (f" (now {reg['name']}@{reg['alias']})" if reg["alias"] else "")
        )
        text.append(report_line(reg))
    return "\n".join(text)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def plot_trials(results, sweep, storage: Storage, plot_dir: str) -> str | None:
    """Metric per epoch for every trial; saved locally and to storage. Returns the storage URI."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5), dpi=110)
    longest = 0
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or not len(frame) or sweep.metric not in frame:
            continue
        longest = max(longest, int(frame["epoch"].max()))
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or not len(frame) or sweep.metric not in frame:
            continue
        trial = (result.metrics or {}).get("trial_id", "?")
        (line,) = axis.plot(frame["epoch"], frame[sweep.metric], marker=".", label=trial)
        if int(frame["epoch"].max()) < longest:  # stopped early by ASHA
            axis.plot(
                frame["epoch"].iloc[-1],
                frame[sweep.metric].iloc[-1],
                "x",
                color=line.get_color(),
                markersize=10,
                mew=2,
            )
    axis.set_xlabel("epoch")
    axis.set_ylabel(sweep.metric)
    axis.set_title(f"sweep {sweep.name}: {sweep.metric} per epoch (x = stopped early)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    return _save(figure, storage, plot_dir, sweep, "trials")


def plot_params(rows: list[dict], sweep, storage: Storage, plot_dir: str) -> str | None:
    """Each searched parameter against the final metric, one panel per parameter; saved
    locally and to storage. Returns the storage URI (None when no trial reported)."""
    plt = _pyplot()
    reported = [row for row in rows if row["final"] is not None]
    if not reported or not sweep.space:
        return None
    figure, axes = plt.subplots(
        1, len(sweep.space), figsize=(3.6 * len(sweep.space), 3.6), dpi=110, squeeze=False,
        sharey=True,
    )  # fmt: skip
    for axis, (key, param) in zip(axes[0], sweep.space.items(), strict=True):
        values = [row["params"].get(key) for row in reported]
        positions = _positions(axis, values, param)
        for stopped, marker in ((False, "o"), (True, "x")):
            picked = [
                i for i, r in enumerate(reported) if (r["status"] == "stopped early") == stopped
            ]
            axis.scatter(
                [positions[i] for i in picked], [reported[i]["final"] for i in picked],
                marker=marker, label="stopped early" if stopped else "ran to the end",
            )  # fmt: skip
        axis.set_xlabel(key)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"final {sweep.metric}")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"sweep {sweep.name}: {sweep.metric} at each trial's last epoch")
    return _save(figure, storage, plot_dir, sweep, "params")


def _positions(axis, values: list, param) -> list:
    """x positions: ranges as numbers (log scale for loguniform), choices by index."""
    if param.type not in ("choice", "grid"):
        if param.type == "loguniform":
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(_pyplot().NullFormatter())  # labels would overlap
        return values
    choices = [str(v) for v in (param.values or sorted(set(map(str, values))))]
    axis.set_xticks(range(len(choices)), choices)
    return [choices.index(str(v)) if str(v) in choices else -1 for v in values]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, storage: Storage, plot_dir: str, sweep, kind: str) -> str:
    """`<plot_dir>/<sweep>-<kind>.png` and `<storage>/sweeps/<sweep>/<kind>.png`."""
    local = Path(plot_dir) / f"{sweep.name}-{kind}.png"
    local.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(local, bbox_inches="tight")
    _pyplot().close(figure)
    key = f"sweeps/{sweep.name}/{kind}.png"
    storage.write_bytes(key, local.read_bytes())
    return storage.uri_for(key)


def write_summary(storage: Storage, sweep, result) -> None:
    summary = asdict(result)
    summary["config"] = sweep.model_dump()
    summary["epochs_trained"] = sum(row["epochs"] for row in result.rows)
    summary = _finite(summary)
    storage.write_json(f"sweeps/{sweep.name}/summary.json", summary)


def _finite(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value

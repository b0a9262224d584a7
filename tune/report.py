"""What a person looks at after a sweep: a table sorted by the metric, a JSON summary, and a
plot of each trial's metric per epoch (early-stopped trials end early, marked with an x)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from cluster.storage import Storage
from cluster.text import format_table as aligned
from workloads.checkpoint import meta_key


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
            "epoch": None,
            "checkpoint_key": None,
            "status": "errored" if result.error is not None else "completed",
        }
        if frame is not None and len(frame) and sweep.metric in frame:
            row["epochs"] = int(frame["epoch"].max())
            best = _best_checkpointed(frame, sweep, storage)
            if best is not None:
                row["metric"], row["epoch"], row["checkpoint_key"] = best
        rows.append(row)
        max_epochs = max(max_epochs or 0, row["epochs"])
    for row in rows:
        if row["status"] == "completed" and row["epochs"] < (max_epochs or 0):
            row["status"] = "stopped early"
    sign = -1 if sweep.mode == "max" else 1
    rows.sort(key=lambda r: (r["metric"] is None, sign * (r["metric"] or 0)))
    return rows


def _best_checkpointed(frame, sweep, storage: Storage):
    """(metric, epoch, storage key) of the best epoch whose checkpoint is still in storage."""
    if "checkpoint_path" not in frame:
        return None
    candidates = frame[frame["checkpoint_path"].notna()]
    candidates = candidates.sort_values(sweep.metric, ascending=sweep.mode == "min")
    for _, row in candidates.iterrows():
        key = storage.key_from_arrow_path(row["checkpoint_path"])
        if storage.exists(meta_key(key)):  # top-k retention may have removed others
            return float(row[sweep.metric]), int(row["epoch"]), key
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
        f"early stopping); best {sweep.metric} {result.best['metric']:.4f} ({result.best['trial']})"
    )
    for error in result.errors:
        text.append(f"failed: {error}")
    if result.plot_uri:
        text.append(f"plot: {result.plot_uri}")
    if result.registered:
        reg = result.registered
        text.append(
            f"registered: {reg['name']}:{reg['version']}"
            + (f" (now {reg['name']}@{reg['alias']})" if reg["alias"] else "")
        )
    return "\n".join(text)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def plot_trials(results, sweep, storage: Storage, plot_dir: str) -> str | None:
    """Metric per epoch for every trial; saved locally and to storage. Returns the storage URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    local = Path(plot_dir) / f"{sweep.name}-trials.png"
    local.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(local, bbox_inches="tight")
    plt.close(figure)
    key = f"sweeps/{sweep.name}/trials.png"
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

"""The pictures of an evaluation report and the one HTML page that shows them (matplotlib).

    plot_confusion_matrix(report, "confusion_matrix.png")
    plot_roc_curves(report, probabilities, labels, "roc_curves.png")
    plot_reliability(report, "reliability.png")
    html = render_html(report, directory, {"confusion_matrix": "confusion_matrix.png", ...})

The page is self-contained: styles inline, each plot embedded as a data: URI, so it reads the
same attached to a ticket, opened from a download, or served from S3. Each embedded plot links
to the PNG it came from (shipped beside the page) for a full-size view. Called by
workloads/report.py's `write_report`; the numbers come from the report's JSON.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

MAX_ROC_LEGEND = 12  # beyond this many classes a legend hides the curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training node
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.savefig(path, bbox_inches="tight", dpi=110)
    _pyplot().close(figure)


def plot_confusion_matrix(report: dict, path: Path) -> None:
    """Heatmap of counts, each row normalized for the colour so small classes still show."""
    plt = _pyplot()
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    classes = report["confusion_matrix"]["classes"]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:  # counts stay legible up to about this many cells per row
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if share[row, column] > 0.6 else "black"
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    axis.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 10 else 0)
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"{report['model']}: confusion matrix ({report['rows']} rows)")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    _save(figure, path)


def plot_roc_curves(report: dict, probabilities: np.ndarray, labels: np.ndarray, path) -> None:
    """One-vs-rest ROC curve per class present, with its AUC."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5.5))
    for index, row in enumerate(report["per_class"]):
        if row["auc_roc"] is None:  # no positives or no negatives among the rows
            continue
        fpr, tpr, _ = roc_curve(labels == index, probabilities[:, index])
        axis.plot(fpr, tpr, linewidth=1.2, label=f"{row['class']} (AUC {row['auc_roc']:.3f})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    auc = report["metrics"]["auc_roc"]
    title = f"AUC {auc:.4f}" if auc is not None else "AUC undefined"
    axis.set_title(f"{report['model']}: ROC, one vs rest (macro {title})")
    if len(report["per_class"]) <= MAX_ROC_LEGEND:
        axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    _save(figure, path)


def plot_reliability(report: dict, path: Path) -> None:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), and how many
    rows fall in each bin."""
    plt = _pyplot()
    calibration = report["calibration"]
    edges = np.asarray(calibration["bin_edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = [i for i, c in enumerate(calibration["count"]) if c]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(
        centers[filled], [calibration["accuracy"][i] for i in filled], width=width * 0.9,
        edgecolor="black", alpha=0.7, label="accuracy in bin",
    )  # fmt: skip
    top.plot(
        [calibration["confidence"][i] for i in filled],
        [calibration["accuracy"][i] for i in filled], "o-", color="darkorange", markersize=3,
        label="at the bin's mean confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8, label="perfectly calibrated")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{report['model']}: reliability (ECE {report['metrics']['ece']:.4f})")
    top.legend(fontsize=7, loc="upper left")
    bottom.bar(centers, calibration["count"], width=width * 0.9, color="grey")
    bottom.set_xlabel("confidence (top class probability)")
    bottom.set_ylabel("rows")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def render_html(report: dict, directory: Path, plots: dict[str, str]) -> str:
    """The page: headline metrics, the plots (embedded, linked to their PNGs), per-class table."""
    esc = html.escape
    metrics = "".join(
        f"<tr><th>{esc(key)}</th><td>{_cell(value)}</td></tr>"
        for key, value in report["metrics"].items()
    )
    per_class = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[k])}</td>" for k in _CLASS_COLUMNS) + "</tr>"
        for row in report["per_class"]
    )
    figures = "".join(
        f'<figure><a href="{esc(name)}"><img alt="{esc(key)}" src="data:image/png;base64,'
        f'{base64.b64encode((Path(directory) / name).read_bytes()).decode()}"></a>'
        f'<figcaption><a href="{esc(name)}">{esc(name)}</a></figcaption></figure>'
        for key, name in plots.items()
    )
    data = report["data"]
    return _PAGE.format(
        title=esc(f"{report['model']}: evaluation"),
        model=esc(report["model"]),
        model_uri=esc(report.get("model_uri", "")),
        data=esc(f"{data['description']} ({data['uri']})"),
        rows=report["rows"],
        created=esc(report["created_at"]),
        metrics=metrics,
        figures=figures,
        header="".join(f"<th>{esc(k)}</th>" for k in _CLASS_COLUMNS),
        per_class=per_class,
    )


_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support", "auc_roc")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 520px; border: 1px solid #eee; }}
.meta {{ color: #555; }}
</style></head>
<body>
<h1>{model}</h1>
<p class="meta">{model_uri}<br>evaluated on {data}: {rows} rows, {created}</p>
<h2>Metrics</h2>
<table>{metrics}</table>
<h2>Plots</h2>
{figures}
<h2>Per class</h2>
<table><tr>{header}</tr>{per_class}</table>
</body></html>
"""

"""The evaluation report of a model version: scikit-learn metrics, plots, one HTML page, JSON.

    raylane models evaluate digits:3                      # writes the report, prints its summary
    report = build_report(probabilities, labels, class_names=spec.class_names, about={...})
    files = write_report(directory, report, probabilities, labels)    # JSON, PNGs, HTML
    print(format_report(report))

A report directory holds `report.json` (written last: its presence means the report is whole),
`report.html` (one page that needs nothing else: the plots are embedded, and each links to its
PNG beside it) and three PNGs: `confusion_matrix.png`, `roc_curves.png`, `reliability.png`.
Where reports live in storage is the registry's business (`Registry.report_key`).

Metrics come from scikit-learn, computed on the predicted probabilities (N, K) and the true
class indices (N,):

- accuracy, f1_macro, f1_weighted; per class precision, recall, f1, support, ROC AUC;
- auc_roc: one-vs-rest ROC AUC, macro-averaged (`roc_auc_score(multi_class="ovr")`); when the
  rows lack some classes, the mean over the classes present (scikit-learn refuses those rows),
  the same rule as the training metric `val_auc_roc`; binary: the AUC of class 1;
- log_loss; the confusion matrix (rows: true class, columns: predicted);
- ece, the expected calibration error of the top-label confidence over 15 equal-width bins
  (Guo et al. 2017): scikit-learn's `calibration_curve` gives each bin's accuracy and mean
  confidence, and ECE weights their gaps by the bin's share of rows.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cluster.text import format_table

FORMAT_VERSION = 1
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
PLOTS = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_curves": "roc_curves.png",
    "reliability": "reliability.png",
}
CALIBRATION_BINS = 15
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "auc_roc", "log_loss", "ece")


def build_report(
    probabilities: np.ndarray, labels: np.ndarray, *, class_names, about: dict
) -> dict:
    """The JSON report of predicted `probabilities` (N, K) against true class indices `labels`.

    `about` says what was evaluated (model, data, rows' origin) and is stored as given.
    """
    from sklearn import metrics as sk

    probabilities, labels = _checked(probabilities, labels, len(class_names))
    predictions = probabilities.argmax(axis=1)
    classes = list(range(len(class_names)))
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    per_class_auc = [_class_auc(probabilities, labels, c) for c in classes]
    calibration = calibration_bins(probabilities, labels)
    metrics = {
        "accuracy": sk.accuracy_score(labels, predictions),
        "f1_macro": sk.f1_score(labels, predictions, average="macro", zero_division=0),
        "f1_weighted": sk.f1_score(labels, predictions, average="weighted", zero_division=0),
        "auc_roc": auc_roc(probabilities, labels, per_class_auc),
        "log_loss": sk.log_loss(labels, probabilities, labels=classes),
        "ece": calibration["ece"],
    }
    return {
        "format_version": FORMAT_VERSION,
        **about,
        "rows": len(labels),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {key: _finite(value) for key, value in metrics.items()},
        "per_class": [
            {
                "class": str(name),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "auc_roc": per_class_auc[i],
            }
            for i, name in enumerate(class_names)
        ],  # fmt: skip
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "classes": [str(name) for name in class_names],
            "matrix": sk.confusion_matrix(labels, predictions, labels=classes).tolist(),
        },
        "calibration": calibration,
        "files": [REPORT_HTML, *PLOTS.values()],
    }


def _checked(probabilities, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if probabilities.shape != (len(labels), num_classes) or len(labels) == 0:
        raise ValueError(
            f"probabilities must be (N, {num_classes}) for N={len(labels)} > 0 labels, "
            f"got {probabilities.shape}"
        )
    # Float32 softmax rows sum to 1 only within ~1e-7; scikit-learn checks sums strictly.
    return probabilities / probabilities.sum(axis=1, keepdims=True), labels


def _class_auc(probabilities: np.ndarray, labels: np.ndarray, cls: int) -> float | None:
    """ROC AUC of class `cls` against the rest; None when the rows hold only one side."""
    from sklearn.metrics import roc_auc_score

    positive = labels == cls
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, probabilities[:, cls]))


def auc_roc(probabilities: np.ndarray, labels: np.ndarray, per_class: list) -> float:
    """One-vs-rest macro ROC AUC (binary: class 1's AUC); NaN with fewer than 2 classes."""
    from sklearn.metrics import roc_auc_score

    num_classes = probabilities.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    if len(present) == num_classes:
        return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    return float(np.mean([auc for auc in per_class if auc is not None]))


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Top-label reliability in CALIBRATION_BINS equal-width bins, and the ECE from them."""
    from sklearn.calibration import calibration_curve

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    # The bin of each row exactly as calibration_curve assigns it, to count rows per bin.
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=CALIBRATION_BINS)
    accuracy, mean_confidence = calibration_curve(
        correct, confidence, pos_label=True, n_bins=CALIBRATION_BINS, strategy="uniform"
    )
    filled = counts[counts > 0]
    ece = float(np.sum(filled / len(labels) * np.abs(accuracy - mean_confidence)))
    return {
        "ece": ece,
        "bin_edges": [float(e) for e in edges],
        "count": [int(c) for c in counts],
        "accuracy": _per_bin(counts, accuracy),
        "confidence": _per_bin(counts, mean_confidence),
    }


def _per_bin(counts: np.ndarray, values: np.ndarray) -> list[float | None]:
    """Values of the filled bins spread back over all bins (None where a bin is empty)."""
    spread: list[float | None] = [None] * len(counts)
    for index, value in zip(np.flatnonzero(counts), values, strict=True):
        spread[index] = float(value)
    return spread


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN


# ---------------------------------------------------------------------- files


def write_report(
    directory: str | Path, report: dict, probabilities: np.ndarray, labels: np.ndarray
) -> Path:
    """Plots, the HTML page, then report.json (last: it marks the directory complete)."""
    from workloads import report_html

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probabilities, labels = _checked(probabilities, labels, len(report["per_class"]))
    report_html.plot_confusion_matrix(report, directory / PLOTS["confusion_matrix"])
    report_html.plot_roc_curves(report, probabilities, labels, directory / PLOTS["roc_curves"])
    report_html.plot_reliability(report, directory / PLOTS["reliability"])
    (directory / REPORT_HTML).write_text(report_html.render_html(report, directory, PLOTS))
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return directory


def format_report(report: dict, *, uri: str | None = None) -> str:
    """What `raylane models evaluate` prints: headline metrics, the per-class table, where."""
    data = report["data"]
    lines = [
        f"{report['model']} on {data['description']}: {report['rows']} rows",
        "  ".join(f"{key} {_number(report['metrics'][key])}" for key in HEADLINE),
        "",
        format_table(
            ["class", "precision", "recall", "f1", "support", "auc_roc"],
            [
                [
                    row["class"],
                    *(_number(row[k]) for k in ("precision", "recall", "f1")),
                    str(row["support"]),
                    _number(row["auc_roc"]),
                ]
                for row in report["per_class"]
            ],  # fmt: skip
        ),
    ]
    if uri:
        lines += ["", f"report: {uri}/{REPORT_HTML}", f"        ({', '.join(report['files'][1:])}, "
                  f"{REPORT_JSON} beside it)"]  # fmt: skip
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"

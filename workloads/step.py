"""One optimization step, batched prediction, and the validation metrics. Pure torch/numpy.

    loss = train_step(model, features, labels, optimizer, autocast_dtype=torch.bfloat16,
                      device_type="cuda")
    logits = predict_logits(model, features)              # caller sets model.eval()
    metrics = classification_metrics(logits.numpy(), labels.numpy(), num_classes=10)

Nothing here knows about Ray or DDP: `model` may be a DDP-wrapped module, the worker decides.
Metrics are computed in numpy on the gathered logits so that every caller (the Train worker,
Tune, benchmarks, tests) reports the same numbers; they match scikit-learn (see the tests)
without importing it at run time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAX_GRAD_NORM = 1.0  # clipping keeps a bad batch (or an fp16 overflow skipped late) from diverging


def train_step(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
    loss_fn=None,
) -> float:
    """Forward, cross-entropy, backward, clip, step. Returns the batch's mean loss.

    `scaler` is for fp16 (its range is small enough that gradients underflow unscaled);
    bf16 and fp32 pass None. Tensors must already be on the model's device. `loss_fn`
    (logits, labels, features) -> loss replaces cross-entropy (distillation, workloads/recipe.py).
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(features)
    # The loss in float32: log-softmax over low-precision logits loses the small differences.
    if loss_fn is None:
        loss = F.cross_entropy(logits.float(), labels)
    else:
        loss = loss_fn(logits.float(), labels, features)
    if scaler is None:
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        scaler.step(optimizer)  # skips the step when the unscaled gradients hold inf/NaN
        scaler.update()
    return loss.item()


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    features: torch.Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
) -> torch.Tensor:
    """float32 logits (N, num_classes). Setting model.eval() is the caller's job."""
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return model(features).float()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row max keeps exp() from overflowing."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """loss (mean cross-entropy), accuracy, f1_macro and auc_roc of logits (N, K) vs labels (N,).

    f1_macro averages over the classes present in labels or predictions (scikit-learn's
    default). auc_roc is binary ROC AUC of class 1 for K == 2, else one-vs-rest macro AUC over
    the classes present in labels; NaN when fewer than two classes are present (no ranking to
    score) or the logits are not finite.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape != (len(labels), num_classes):
        raise ValueError(
            f"logits must be (N, {num_classes}) for N={len(labels)} labels, got {logits.shape}"
        )
    if len(labels) == 0:
        raise ValueError("no examples to compute metrics on")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    return {
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "accuracy": float((predictions == labels).mean()),
        "f1_macro": f1_macro(predictions, labels),
        "auc_roc": auc_roc(np.exp(log_probs), labels),
    }


def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for cls in np.union1d(labels, predictions):
        true_pos = np.sum((predictions == cls) & (labels == cls))
        false_pos = np.sum((predictions == cls) & (labels != cls))
        false_neg = np.sum((predictions != cls) & (labels == cls))
        # Denominator > 0: cls occurs in labels or predictions by construction.
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return float(np.mean(scores))


def auc_roc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2 or not np.isfinite(probabilities).all():
        return float("nan")
    if probabilities.shape[1] == 2:
        return _binary_auc(probabilities[:, 1], labels == 1)
    return float(np.mean([_binary_auc(probabilities[:, cls], labels == cls) for cls in present]))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U form of ROC AUC: tied scores share their average rank (count as 1/2)."""
    num_pos = int(positive.sum())
    num_neg = len(positive) - num_pos
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(scores)]
    # Ranks starts+1 .. ends (1-based) share their mean.
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = group_rank[np.cumsum(starts_group) - 1]
    return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))

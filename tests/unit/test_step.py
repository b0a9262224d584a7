"""train_step / predict_logits / metrics, checked against scikit-learn. Pure: no Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from torch import nn

from workloads.step import classification_metrics, predict_logits, softmax, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _sklearn_metrics(logits, labels, num_classes):
    probs = softmax(logits)
    if num_classes == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    return {
        "loss": log_loss(labels, probs, labels=list(range(num_classes))),
        "accuracy": accuracy_score(labels, probs.argmax(axis=1)),
        "f1_macro": f1_score(labels, probs.argmax(axis=1), average="macro"),
        "auc_roc": auc,
    }


@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=300)
    labels[:num_classes] = np.arange(num_classes)  # every class present, as sklearn's ovr needs
    # Informative but noisy logits so every metric lands away from its trivial value.
    logits = rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    ours = classification_metrics(logits, labels, num_classes)
    expected = _sklearn_metrics(logits, labels, num_classes)
    assert ours == pytest.approx(expected, abs=1e-9)
    assert 0.5 < ours["accuracy"] < 1.0


def test_metrics_with_tied_scores_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=200)
    # Logits from 4 values only: many exact ties in class-1 probabilities.
    logits = np.stack([np.zeros(200), rng.integers(-2, 2, size=200) + labels], axis=1).astype(float)
    ours = classification_metrics(logits, labels, 2)
    assert ours == pytest.approx(_sklearn_metrics(logits, labels, 2), abs=1e-9)

    labels3 = rng.integers(0, 3, size=200)
    logits3 = rng.integers(0, 3, size=(200, 3)).astype(float) + np.eye(3)[labels3]
    ours3 = classification_metrics(logits3, labels3, 3)
    assert ours3 == pytest.approx(_sklearn_metrics(logits3, labels3, 3), abs=1e-9)


def test_f1_with_a_class_never_predicted_matches_sklearn():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 1])
    logits = np.eye(3)[[0, 1, 1, 1, 1, 0, 1, 0]] * 3.0  # class 2 never predicted
    ours = classification_metrics(logits, labels, 3)
    predictions = logits.argmax(axis=1)
    assert ours["f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert ours["accuracy"] == pytest.approx(3 / 8)


def test_auc_is_nan_with_one_class_and_ovr_over_present_classes():
    logits = np.random.default_rng(0).normal(size=(20, 4))
    assert math.isnan(classification_metrics(logits, np.full(20, 2), 4)["auc_roc"])
    # Classes 0 and 3 only: the mean of their one-vs-rest AUCs.
    labels = np.array([0, 3] * 10)
    probs = softmax(logits)
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 3)])
    assert classification_metrics(logits, labels, 4)["auc_roc"] == pytest.approx(expected)


def test_metrics_are_stable_for_huge_logits_and_check_shapes():
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    metrics = classification_metrics(logits, np.array([0, 0]), 2)
    assert metrics["loss"] == pytest.approx(1000.0)  # finite: half the rows cost 2000 nats
    assert math.isnan(metrics["auc_roc"])
    assert softmax(logits) == pytest.approx(np.array([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"logits must be \(N, 3\)"):
        classification_metrics(logits, np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(logits, np.array([0, 2]), 2)


def _separable(seed=0, n=256):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 4, generator=generator)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    return features, labels


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_train_step_learns_a_separable_problem(autocast_dtype):
    torch.manual_seed(0)
    features, labels = _separable()
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    losses = [
        train_step(model, features, labels, optimizer, autocast_dtype=autocast_dtype)
        for _ in range(60)
    ]
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    logits = predict_logits(model, features, autocast_dtype=autocast_dtype)
    assert logits.dtype == torch.float32 and logits.shape == (256, 2)
    assert (logits.argmax(dim=1) == labels).float().mean() > 0.95


def test_train_step_with_grad_scaler_learns_and_clips():
    torch.manual_seed(0)
    features, labels = _separable(seed=1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses = [train_step(model, features, labels, optimizer, scaler=scaler) for _ in range(80)]
    assert losses[-1] < 0.3 * losses[0]

    # Inputs scaled 100x give a gradient norm far above 1: after the step it must be exactly
    # the clip norm, which only holds if the scaler unscaled before clipping (else 1/1024).
    train_step(model, 100 * features, 1 - labels, optimizer, scaler=scaler)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(grads).item() == pytest.approx(1.0, rel=1e-3)

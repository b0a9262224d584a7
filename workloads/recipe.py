"""How a training run departs from training from scratch: applied on every Ray Train worker.

    recipe = Recipe(init_key="registry/digits/versions/3", reinit=("net.4.weight", ...))
    hooks = apply(model, recipe, job.train, storage_uri=..., input_spec=..., device=device)
    optimizer = make_optimizer(model, job.train, pretrained=hooks.pretrained)
    loss = train_step(..., loss_fn=hooks.loss_fn); hooks.after_step(model)

Fine-tuning (`train.init_from`, workloads/finetune.py), pruning (workloads/prune.py) and
distillation (workloads/distill.py) all run the one training loop of workloads/worker.py; their
drivers decide a `Recipe` and the workers apply it here, before the model is made distributed:
start from a stored checkpoint's weights (through workloads/checkpoint.py, never unpickled),
freeze layers, keep pruned weights at zero after each step, or learn from a teacher's logits.
"""

from __future__ import annotations

import fnmatch
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cluster.errors import ConfigError, DataError
from cluster.storage import Storage
from workloads.checkpoint import InputSpec, input_spec_of, load_model, load_weights, unwrap
from workloads.config import TrainConfig
from workloads.trust import CodePolicy


@dataclass(frozen=True)
class Recipe:
    """Decided once on the driver; travels to the workers inside LoopConfig."""

    init_key: str | None = None  # storage key of the checkpoint whose weights start the run
    reinit: tuple[str, ...] = ()  # its weights not loaded: the head, when the class count changed
    sparsity: float | None = None  # unstructured pruning: this fraction of weights stays zero
    teacher_key: str | None = None  # distillation: the teacher's checkpoint
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target loss; (1 - alpha) goes to the hard labels
    lineage: dict = field(default_factory=dict)  # {parent, method, settings}, kept in meta.json


@dataclass
class Hooks:
    """What the training loop asks of a recipe; the defaults change nothing."""

    pretrained: frozenset[str] = frozenset()  # parameter names loaded from init_key
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_fn: object = None  # (logits, labels, features) -> loss; None: cross-entropy

    def after_step(self, model: nn.Module) -> None:
        if self.masks:
            apply_masks(model, self.masks)


def apply(model: nn.Module, recipe: Recipe | None, train: TrainConfig, *, storage_uri: str,
          input_spec: InputSpec, device) -> Hooks:  # fmt: skip
    """Prepare a freshly built (not yet wrapped) model as the recipe says; returns its hooks."""
    hooks = Hooks()
    recipe = recipe or Recipe()
    if recipe.init_key:
        weights = _stored(Storage(storage_uri), recipe.init_key, load_weights)
        hooks.pretrained = load_start(model, weights, reinit=recipe.reinit)
    freeze(model, train.freeze)
    if recipe.sparsity:
        hooks.masks = magnitude_masks(model, recipe.sparsity)
        apply_masks(model, hooks.masks)
    if recipe.teacher_key:
        teacher, meta = _stored(Storage(storage_uri), recipe.teacher_key, _load_teacher)
        adapt = input_adapter(input_spec, input_spec_of(meta))
        hooks.loss_fn = DistillationLoss(
            teacher.to(device), adapt, recipe.temperature, recipe.alpha
        )
    return hooks


def _stored(storage: Storage, key: str, load):
    with tempfile.TemporaryDirectory(prefix="raylane-recipe-") as tmp:
        return load(storage.download_dir(key, Path(tmp) / "checkpoint"))


def _load_teacher(directory: Path):
    # The driver checked the teacher (a registered version) under the operator's policy
    # (workloads/distill.py); its class is then code this job chose to run, as the student's.
    return load_model(directory, policy=CodePolicy.CONFIGURED)


def load_start(model: nn.Module, weights: dict, *, reinit: tuple[str, ...]) -> frozenset[str]:
    """Load `weights` but the `reinit` layers (left as built); returns the names loaded."""
    kept = {k: v for k, v in weights.items() if k not in reinit}
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as error:
        raise DataError(f"the starting weights do not fit the model: {error}") from None
    if set(missing) != set(reinit) or unexpected:
        raise DataError(
            f"the starting weights do not fit the model: missing {sorted(set(missing))[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return frozenset(name for name, _ in model.named_parameters() if name in kept)


def frozen_names(model: nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names matched by `patterns`; a pattern matching none is a ConfigError."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(
                f"train.freeze: {pattern!r} matches no parameter; the model has: "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
            )
    return [name for name in names if any(fnmatch.fnmatch(name, p) for p in patterns)]


def freeze(model: nn.Module, patterns: list[str]) -> None:
    chosen = set(frozen_names(model, patterns))
    for name, parameter in model.named_parameters():
        if name in chosen:
            parameter.requires_grad_(False)


# ---------------------------------------------------------------------- unstructured pruning


def prunable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight matrices and kernels of Linear and Conv layers: what magnitude pruning cuts.
    Biases, norms and embeddings are few parameters and cutting them hurts out of proportion."""
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return {
        f"{prefix}.weight" if prefix else "weight": module.weight
        for prefix, module in unwrap(model).named_modules()
        if isinstance(module, layers)
    }


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: zero the `sparsity` fraction of prunable weights with the
    smallest |w| across all layers together (a layer that matters keeps more of its weights)."""
    weights = prunable(model)
    scores = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    cut = int(sparsity * scores.numel())
    if cut == 0:
        return {name: torch.ones_like(w) for name, w in weights.items()}
    threshold = scores.kthvalue(cut).values
    return {name: (w.detach().abs() > threshold).to(w.dtype) for name, w in weights.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again: AdamW's momentum and weight decay move them each step."""
    for name, parameter in unwrap(model).named_parameters():
        if name in masks:
            parameter.mul_(masks[name].to(parameter.device))


def sparsity_of(model: nn.Module) -> float:
    """The fraction of prunable weights that are exactly zero."""
    weights = prunable(model).values()
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


# ---------------------------------------------------------------------- distillation


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, alpha: float) -> torch.Tensor:  # fmt: skip
    """alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy.

    T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et
    al., 2015), so alpha means the same at any temperature."""
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, labels)


class DistillationLoss:
    """The loss of a distillation run: the teacher (eval mode, no gradients) on the same batch."""

    def __init__(self, teacher: nn.Module, adapt, temperature: float, alpha: float):
        self.teacher, self.adapt = teacher.eval(), adapt
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, logits, labels, features) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(self.adapt(features)).float()
        return distillation_loss(
            logits, teacher_logits, labels, temperature=self.temperature, alpha=self.alpha
        )


def input_adapter(student: InputSpec, teacher: InputSpec):
    """features prepared for the student -> the same rows prepared for the teacher: each model
    standardizes with the mean/std of its own training split, which may differ a little."""
    if not (student.normalization and teacher.normalization):
        return lambda features: features
    mean_s, std_s = (_stat(student, k) for k in ("mean", "std"))
    mean_t, std_t = (_stat(teacher, k) for k in ("mean", "std"))

    def adapt(features: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(len(features), -1)
        stats = [s.to(features.device) for s in (mean_s, std_s, mean_t, std_t)]
        raw = flat * stats[1] + stats[0]
        return ((raw - stats[2]) / stats[3]).reshape(features.shape)

    return adapt


def _stat(spec: InputSpec, key: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(spec.normalization[key], np.float32))

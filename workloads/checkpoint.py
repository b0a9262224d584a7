"""The checkpoint contract: a directory that rebuilds a model with no code guesswork.

    model.safetensors   weights (safetensors: loading never unpickles)
    meta.json           format version, model spec, input schema, config, epoch/step,
                        metrics, library versions; written last
    train_state.pt      optional optimizer/scheduler/RNG state, loaded with weights_only=True

    save_checkpoint(directory, model=model, meta=meta, train_state=state)
    model, meta = load_model(directory)

The same directory is what Ray Train reports, what the registry stores as a version, and what
Serve loads.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cluster.errors import DataError
from workloads.models import build_model

FORMAT_VERSION = 1
WEIGHTS, META, TRAIN_STATE = "model.safetensors", "meta.json", "train_state.pt"


def library_versions() -> dict[str, str]:
    import ray

    return {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP/compile wrappers, so weight names carry no 'module.' prefix."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write weights, optional train state, then meta.json (last: it marks completion)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(weights, str(directory / WEIGHTS), metadata={"format": "pt"})
    if train_state is not None:
        torch.save(train_state, directory / TRAIN_STATE)
    full_meta = {"format_version": FORMAT_VERSION, "versions": library_versions(), **meta}
    (directory / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory} is not a complete checkpoint: {META} is missing") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} has checkpoint format {version!r}; this raylane reads format "
            f"{FORMAT_VERSION}: re-export the checkpoint or upgrade raylane"
        )
    return meta


def load_model(directory: str | Path, *, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from meta.json and load its weights; returns (model in eval mode, meta)."""
    meta = read_meta(directory)
    model = build_model(meta["model"])
    weights = load_file(str(Path(directory) / WEIGHTS), device=device)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DataError(
            f"weights in {directory} do not fit the model in {META}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), meta


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / TRAIN_STATE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)

"""`raylane optimize prune`: magnitude pruning of a registered version, then recovery epochs.

    raylane optimize prune --model digits@production --sparsity 0.5 --epochs 3 --register digits
    raylane optimize prune --model digits:3 --sparsity 0.5 --structured --register digits-small
    ray job submit --working-dir . -- python -m workloads.optimize prune --model digits:3 ...

Unstructured (the default): the `sparsity` fraction of all Linear and Conv weights with the
smallest magnitude, ranked across layers together, is set to zero, and the recovery epochs keep
it there (the masks are applied again after every optimizer step, so the saved weights hold the
zeros: there is no mask to fold in later). The model keeps its shape.

Structured (`--structured`, MLPs): in each hidden layer the `sparsity` fraction of neurons with
the smallest incoming weights (L2 norm of the weight row and bias) is removed: its row of the
layer and its column of the next layer go. The result is a plain, smaller MLP whose spec
records the new hidden sizes, so build_model rebuilds it from meta.json and Serve loads it as
any model. Its outputs equal the unpruned model's with those neurons masked to zero.

Both recover with the same Ray Train loop as `raylane train` (the parent's config and data,
`--epochs` of them) and register the best checkpoint with lineage {parent, method, settings}.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cluster.config import apply_overrides, validate
from cluster.errors import ConfigError, run_cli
from cluster.registry import check_name
from cluster.runtime import use_code
from cluster.storage import Storage
from workloads.checkpoint import LAYOUT, load_weights, save_checkpoint
from workloads.config import JobConfig
from workloads.finetune import (
    Parent,
    add_derived_args,
    check_code,
    resolve_parent,
    train_and_register,
)
from workloads.models import build_model, count_parameters
from workloads.recipe import Recipe
from workloads.trust import CodePolicy


def prune_neurons(spec: dict, weights: dict[str, torch.Tensor], sparsity: float):
    """Structured pruning of an MLP: (smaller spec, its weights, kept neuron indices per hidden
    layer). Each hidden layer keeps the (1 - sparsity) fraction of neurons with the largest
    incoming weights, at least one."""
    if spec.get("family") != "mlp":
        raise ConfigError(
            f"--structured removes MLP neurons; this is a {spec.get('family')} model: drop "
            "--structured for unstructured pruning"
        )
    linears = [
        name for name, module in _built(spec).named_modules() if isinstance(module, nn.Linear)
    ]
    pruned, kept_per_layer = dict(weights), []
    for layer, following in zip(linears[:-1], linears[1:], strict=True):
        weight, bias = pruned[f"{layer}.weight"], pruned[f"{layer}.bias"]
        norms = torch.cat([weight, bias[:, None]], dim=1).norm(dim=1)
        keep = max(1, round((1 - sparsity) * len(bias)))
        kept = norms.topk(keep).indices.sort().values  # in order: the survivors keep their places
        pruned[f"{layer}.weight"], pruned[f"{layer}.bias"] = weight[kept], bias[kept]
        pruned[f"{following}.weight"] = pruned[f"{following}.weight"][:, kept]
        kept_per_layer.append(kept)
    sizes = [len(kept) for kept in kept_per_layer]
    return {**spec, "kwargs": {**spec["kwargs"], "hidden_sizes": sizes}}, pruned, kept_per_layer


def _built(spec: dict) -> nn.Module:
    return build_model(spec, policy=CodePolicy.CONFIGURED)  # built-in families only here


def recovery_config(parent: Parent, args: argparse.Namespace, name: str) -> JobConfig:
    """The parent's own training config (its data, so its validation rows stay unseen), renamed,
    with --epochs and --set applied."""
    recorded = parent.meta.get("config")
    if not (isinstance(recorded, dict) and isinstance(recorded.get("data"), dict)):
        raise ConfigError(
            f"{parent.ref} records no training config in its meta.json; prune a version that "
            "raylane trained"
        )
    overrides = [f"name={args.name or name}", "train.init_from=null", *args.set]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    data = apply_overrides(dict(recorded), overrides)
    return validate(JobConfig, data, source=f"recovery config of {parent.ref}")


def structured_start(parent: Parent, config: JobConfig, storage: Storage, sparsity: float,
                     lineage: dict) -> tuple[JobConfig, str]:  # fmt: skip
    """Prune the parent's neurons and store the smaller model where the workers start from it;
    returns the config with the new hidden sizes and the stored checkpoint's key."""
    with tempfile.TemporaryDirectory(prefix="raylane-prune-") as tmp:
        weights = load_weights(storage.download_dir(parent.key, Path(tmp) / "parent"))
        spec, pruned, _ = prune_neurons(parent.meta["model"], weights, sparsity)
        model = _built(spec)
        model.load_state_dict(pruned)
        meta = {"model": spec, "input": parent.meta["input"], "lineage": lineage}
        directory = save_checkpoint(Path(tmp) / "pruned", model=model, meta=meta)
        key = f"runs/{config.name}/pruned-start"
        storage.upload_dir(directory, key, last=(LAYOUT.marker,))
    sizes = spec["kwargs"]["hidden_sizes"]
    return config.model_copy(
        update={"model": config.model.model_copy(update={"hidden_sizes": sizes})}
    ), key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane optimize prune",
        description="Magnitude-prune a registered version to a target sparsity, recover with a "
        "few Ray Train epochs, register the result as a new version.",
    )
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME:VERSION to prune")
    parser.add_argument("--sparsity", type=float, required=True,
                        help="fraction of weights (or, --structured, neurons) removed, in (0, 1)")  # fmt: skip
    parser.add_argument("--structured", action="store_true",
                        help="remove whole MLP neurons: a smaller, faster model")  # fmt: skip
    add_derived_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_code(args.working_dir, args.py_modules)  # before a config names a custom class
    if not 0 < args.sparsity < 1:
        raise ConfigError(
            f"--sparsity is the fraction of weights removed and lies strictly between 0 and 1, "
            f"got {args.sparsity}"
        )
    storage = Storage.from_uri(args.storage)
    check_name(args.register)  # a bad name fails before training, not after
    parent = resolve_parent(storage, args.model)
    check_code(parent, storage)
    kind = "structured" if args.structured else "unstructured"
    run = f"{parent.ref.replace(':', '-v')}-prune-{kind}-{round(args.sparsity * 100)}"
    config = recovery_config(parent, args, run)
    settings = {"sparsity": args.sparsity, "structured": args.structured,
                "epochs": config.train.epochs}  # fmt: skip
    lineage = {"parent": parent.ref, "method": "prune", "settings": settings}
    if args.structured:
        config, start = structured_start(parent, config, storage, args.sparsity, lineage)
        recipe = Recipe(init_key=start, lineage=lineage)
    else:
        if config.train.strategy == "fsdp":
            raise ConfigError("unstructured pruning masks whole tensors: use train.strategy=ddp")
        recipe = Recipe(init_key=parent.key, sparsity=args.sparsity, lineage=lineage)
    before = count_parameters(_built(parent.meta["model"]))
    print(f"pruning {parent.ref} ({before:,} parameters), {kind}, sparsity {args.sparsity}")
    train_and_register(config, storage, recipe, args)
    return 0


if __name__ == "__main__":
    run_cli(main)

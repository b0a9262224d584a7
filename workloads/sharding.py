"""Fully sharded data parallelism (FSDP2) for `train.strategy: fsdp`. Pure torch, no Ray.

    model = shard(build_model(spec), device=device, param_dtype=torch.bfloat16)  # every rank
    weights, optimizer_state = full_state(model, optimizer)   # every rank: a collective
    load_full_state(model, optimizer, weights, optimizer_state)  # every rank, on resume

Each rank holds 1/world_size of every parameter, gradient and optimizer state; a block's
parameters are all-gathered just before its forward/backward and freed after. The model stays
a plain nn.Module from workloads/models.py: `fully_shard` is applied here, to each block and
then the root (the root takes what no block owns, e.g. embeddings). Checkpoints stay in the
one format of workloads/checkpoint.py: the full state dict is gathered (onto the CPU) and only
rank 0 writes it; on resume every rank reads that full state and keeps its own shard.
"""

from __future__ import annotations

import torch
from torch import nn

# torch.distributed's fsdp and checkpoint modules are imported where they are used: they took
# ~0.5 s of every process that imports the worker's loop (each sweep trial's, each Ray Train
# worker's), and only a run with train.strategy=fsdp needs them.
# Sharded as one unit: their forward reads parameters directly (attention's out_proj.weight,
# an RNN's flat weights) instead of calling the inner Linear, so an inner unit would never be
# gathered.
WHOLE_BLOCKS = (nn.TransformerEncoderLayer, nn.RNNBase)
LEAF_BLOCKS = (nn.Linear, nn.Conv2d)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The sub-modules sharded on their own, children before parents (as fully_shard needs)."""
    found: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, WHOLE_BLOCKS):
            found.append(child)
        else:
            found += blocks(child)
            if isinstance(child, LEAF_BLOCKS):
                found.append(child)
    return found


def shard(
    model: nn.Module, *, device: torch.device, param_dtype: torch.dtype | None = None
) -> nn.Module:
    """fully_shard each block, then the root. `param_dtype` (GPU mixed precision) is what the
    gathered parameters compute in; gradients are reduced and kept in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    model.to(device)
    for block in blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(weights, optimizer state), both whole and on the CPU. Every rank must call it (the
    shards are gathered); rank 0 gets the tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    gathered = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=gathered)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=gathered)
    return weights, optimizer_state


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optimizer_state: dict | None
) -> None:
    """Load whole weights (and optimizer state) on every rank; each keeps only its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer_state:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

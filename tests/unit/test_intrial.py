"""A sweep trial that trains in its own process (workloads/intrial.py) reads its splits from
tensors held in memory: every epoch sees every row once, shuffled by the epoch's seed. No Ray."""

from __future__ import annotations

import numpy as np
import torch

from workloads.checkpoint import InputSpec
from workloads.worker import Collate, EpochData


def test_a_split_held_in_memory_gives_every_row_once_per_epoch_in_a_seeded_order():
    spec = InputSpec(
        kind="tabular", shape=(2,), dtype="float32", class_names=("a", "b", "c"),
        feature_columns=("x",), label_column="y",
    )  # fmt: skip
    features = torch.stack([torch.arange(500.0), torch.ones(500)], dim=1)
    labels = torch.arange(500) % 3
    data = EpochData((features, labels), Collate(spec), cache_bytes=0,
                     device=torch.device("cpu"), batch_size=32, chunked=True)  # fmt: skip

    def epoch(seed):
        batches = list(data.batches(shuffle_seed=seed))
        assert all(len(y) <= 32 for _, y in batches)
        seen = torch.cat([f for f, _ in batches]).numpy()
        assert (torch.cat([y for _, y in batches]).numpy() == seen[:, 0].astype(int) % 3).all()
        return seen[:, 0]

    first, again, second = epoch(1), epoch(1), epoch(2)
    assert sorted(first.astype(int).tolist()) == list(range(500))
    assert np.array_equal(first, again) and not np.array_equal(first, second)
    unshuffled = torch.cat([f for f, _ in data.batches()]).numpy()[:, 0]
    assert np.array_equal(unshuffled, np.arange(500.0))  # validation: in order, whole

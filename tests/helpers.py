"""Helpers shared by the test modules of both tiers (tests/unit, tests/integration).

features, labels = digits_data()                 # raw digits, as clients send them
directory = digits_checkpoint(tmp / "v1", seed=1)   # a small trained MLP checkpoint
wait_for(lambda: server_is_up(), timeout_s=30, what="the server")
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from workloads.checkpoint import InputSpec, prepare_features, save_checkpoint
from workloads.config import ModelConfig
from workloads.models import build_model, model_spec
from workloads.trust import CodePolicy


def wait_for(condition, *, timeout_s: float, what: str, interval_s: float = 0.25):
    """Poll `condition` until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


DIGITS_SHAPE = [1, 8, 8]


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Raw digits as clients send them: (N, 64) pixel values 0..16, and labels."""
    digits = load_digits()
    return digits.images.reshape(len(digits.images), -1).astype(np.float32), digits.target


def digits_schema(features: np.ndarray) -> dict:
    """The input section training would write for these features."""
    mean, std = float(features.mean()), float(features.std())
    return {
        "kind": "image",
        "shape": DIGITS_SHAPE,
        "dtype": "float32",
        "class_names": [str(c) for c in range(10)],
        "vocab_size": None,
        "normalization": {"mean": [mean], "std": [std]},
        "feature_columns": ["features"],
        "label_column": "label",
    }


def digits_checkpoint(directory, *, seed: int, steps: int = 60, data_uri: str | None = None):
    """A digits MLP fitted for `steps` full-batch Adam steps; returns the checkpoint dir.

    With `data_uri` (the prepared digits, `workloads.data.prepare(storage, "digits").uri`) its
    meta records the data and a 20% validation split, as training would, so it can be evaluated
    and registered with a report."""
    features, labels = digits_data()
    schema = digits_schema(features)
    config = ModelConfig(family="mlp", hidden_sizes=[32], dropout=0.0)
    spec = model_spec(config, input_shape=DIGITS_SHAPE, num_classes=10)
    torch.manual_seed(seed)
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    inputs = torch.as_tensor(prepare_features(features, InputSpec.from_dict(schema)))
    targets = torch.as_tensor(labels, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    accuracy = float((model(inputs).argmax(1) == targets).float().mean())
    meta = {
        "model": spec,
        "input": schema,
        "metrics": {"val_accuracy": accuracy},
        "epoch": steps,
        "config": {"seed": seed},
        "run_name": f"test-digits-{seed}",
    }
    if data_uri:
        meta["data_uri"] = data_uri
        meta["config"]["data"] = {"validation_fraction": 0.2}
    return save_checkpoint(directory, model=model, meta=meta)


def tokens_checkpoint(directory, *, vocab_size: int = 16, length: int = 8):
    schema = {
        "kind": "tokens",
        "shape": [length],
        "dtype": "int64",
        "class_names": ["a", "b", "c"],
        "vocab_size": vocab_size,
        "normalization": None,
        "feature_columns": ["features"],
        "label_column": "label",
    }
    config = ModelConfig(family="transformer", d_model=16, num_heads=2, num_layers=1, dropout=0.0)
    spec = model_spec(config, input_shape=[length], num_classes=3, vocab_size=vocab_size)
    torch.manual_seed(0)
    meta = {"model": spec, "input": schema, "metrics": {}, "epoch": 0, "config": {}}
    return save_checkpoint(
        directory, model=build_model(spec, policy=CodePolicy.CONFIGURED), meta=meta
    )


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state owned by `pids`, read from
    /proc (Linux): the sockets a process serves on, whatever library opened them."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:  # gone, or not ours to read
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            found.append((_address(address), int(port, 16), inodes[inode]))
    return sorted(found)


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return str(address)


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found

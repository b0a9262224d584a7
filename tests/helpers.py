"""Helpers shared by the test modules of both tiers (tests/unit, tests/integration).

features, labels = digits_data()                 # raw digits, as clients send them
directory = digits_checkpoint(tmp / "v1", seed=1)   # a small trained MLP checkpoint
directory = tabular_checkpoint(tmp / "t", ["a", "b"], mean=[0, 0], std=[1, 1])  # named columns
directory = text_checkpoint(tmp / "x")             # an (untrained) LSTM on raw strings
png = png_base64(pixels)                           # an image as a client sends it
wait_for(lambda: server_is_up(), timeout_s=30, what="the server")
record = register_local(registry, directory)       # register a local checkpoint (+ report)
check_report(storage, report_key, checkpoint_dir)   # a stored evaluation report is right
metric_sum(scrape_metrics(), "ray_raylane_train_epoch", run="debug")   # Ray's Prometheus endpoint
"""

from __future__ import annotations

import base64
import ipaddress
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from sklearn.datasets import load_digits

from workloads.checkpoint import (
    InputSpec,
    input_spec_of,
    load_model,
    prepare_features,
    save_checkpoint,
)
from workloads.config import ModelConfig
from workloads.data import read_split
from workloads.datasets import DATASETS
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


def scrape_metrics() -> str:
    """The text of the connected Ray node's Prometheus endpoint (metric names carry `ray_`)."""
    import httpx
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


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


def digits_checkpoint(
    directory, *, seed: int, steps: int = 60, family: str = "mlp", data_uri: str | None = None,
    hidden_sizes: tuple[int, ...] = (32,),
):  # fmt: skip
    """A small digits MLP (or CNN) fitted for `steps` full-batch Adam steps; returns the
    checkpoint dir.

    With `data_uri` (the prepared digits, `workloads.data.prepare(storage, "digits").uri`) its
    meta records the data and a 20% validation split, as training would, so it can be evaluated
    and registered with a report."""
    features, labels = digits_data()
    schema = digits_schema(features)
    config = ModelConfig(
        family=family, hidden_sizes=list(hidden_sizes), channels=[4, 8], dropout=0.0
    )
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


def text_checkpoint(directory, *, max_length: int = 12, truncation: str = "right"):
    """An untrained LSTM over raw strings, with a tokenizer fitted on synthetic-news texts."""
    from workloads.rawinputs import fit_tokenizer

    texts, _ = DATASETS["synthetic-news"].generate(rows=300, seed=0)
    classes = list(DATASETS["synthetic-news"].class_names)
    text = {"max_length": max_length, "truncation": truncation}
    text["tokenizer"] = fit_tokenizer(texts, vocab_size=200)
    schema = {
        "kind": "text", "shape": [max_length], "dtype": "int64", "class_names": classes,
        "vocab_size": 200, "feature_columns": ["text"], "label_column": "topic", "text": text,
    }  # fmt: skip
    config = ModelConfig(family="rnn", d_model=8, hidden_size=8, num_layers=1, dropout=0.0)
    spec = model_spec(config, input_shape=[max_length], num_classes=4, vocab_size=200)
    torch.manual_seed(0)
    meta = {"model": spec, "input": schema, "metrics": {}, "epoch": 0, "config": {}}
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    return save_checkpoint(directory, model=model, meta=meta)


def png_base64(pixels: np.ndarray) -> str:
    """A (H, W) grayscale or (H, W, 3) RGB uint8 array as base64 PNG, as a client sends it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def tabular_checkpoint(
    directory, names: list[str], *, mean: list[float], std: list[float], label: str = "label"
):
    """An untrained MLP over named numeric columns, with the input spec training writes for a
    Parquet table of them: requests may send a record {name: number} per instance."""
    schema = {
        "kind": "tabular",
        "shape": [len(names)],
        "dtype": "float32",
        "class_names": ["a", "b", "c"],
        "feature_columns": list(names),
        "feature_types": ["double"] * len(names),
        "label_column": label,
        "label_encoding": "index",
        "normalization": {"mean": list(mean), "std": list(std)},
    }
    spec = model_spec(ModelConfig(hidden_sizes=[16]), input_shape=[len(names)], num_classes=3)
    torch.manual_seed(0)
    meta = {"model": spec, "input": schema, "metrics": {}, "epoch": 1, "config": {}}
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


def register_local(registry, directory, *, name: str = "digits", tracking=None) -> dict:
    """Register a local checkpoint directory the way every command does (checked, evaluated,
    with its report when it records its data); returns the registration record."""
    from cluster.storage import Storage
    from workloads.registration import register_checkpoint

    source = Storage(str(directory))
    return register_checkpoint(registry, name, source, "", lineage={}, tracking=tracking)


def check_report(storage, key: str, checkpoint_dir) -> dict:
    """Assert that the report stored at `key` holds scikit-learn's numbers for the checkpoint's
    predictions on its validation split (computed here, without raylane's evaluation code) and
    ships its plots and a page that shows and links them. Returns the report."""
    report = storage.read_json(f"{key}/report.json")
    module, meta = load_model(checkpoint_dir, policy=CodePolicy.CONFIGURED)
    spec = input_spec_of(meta)
    fraction = meta["config"]["data"]["validation_fraction"]
    features, labels = read_split(
        meta["data_uri"], spec, validation_fraction=fraction, split="validation"
    )
    logits = module(torch.as_tensor(prepare_features(features, spec))).detach()
    probabilities = torch.softmax(logits.double(), dim=1).numpy()
    predictions = probabilities.argmax(1)

    matrix = report["confusion_matrix"]["matrix"]
    assert report["rows"] == len(labels) == sum(map(sum, matrix))
    assert matrix == sk.confusion_matrix(labels, predictions).tolist()
    expected = {
        "accuracy": sk.accuracy_score(labels, predictions),
        "f1_macro": sk.f1_score(labels, predictions, average="macro"),
        "f1_weighted": sk.f1_score(labels, predictions, average="weighted"),
        "auc_roc": sk.roc_auc_score(labels, probabilities, multi_class="ovr"),
        "log_loss": sk.log_loss(labels, probabilities),
    }
    assert report["metrics"] == pytest.approx({**expected, "ece": report["metrics"]["ece"]})
    precision, recall, _, support = sk.precision_recall_fscore_support(labels, predictions)
    assert [row["precision"] for row in report["per_class"]] == pytest.approx(precision)
    assert [row["recall"] for row in report["per_class"]] == pytest.approx(recall)
    assert [row["support"] for row in report["per_class"]] == support.tolist()

    page = storage.read_bytes(f"{key}/report.html").decode()
    for png in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        image = storage.read_bytes(f"{key}/{png}")
        assert image.startswith(b"\x89PNG") and f'href="{png}"' in page
        assert base64.b64encode(image).decode() in page  # shown even without the files beside
    return report


@contextmanager
def environment(values: dict[str, str]):
    """`values` in os.environ meanwhile (a module's Ray and its replicas inherit them when
    they start inside); what was there before is put back."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ThreadedLoad:
    """`threads` workers run `_run(worker)` (a subclass's request loop, which ends once
    `self._stop` is set) for as long as the `with` block lasts; their errors surface at exit."""

    def __init__(self, threads: int):
        self.threads = threads
        self._stop, self._pool = threading.Event(), ThreadPoolExecutor(threads)

    def __enter__(self):
        self.start = time.monotonic()
        self._futures = [self._pool.submit(self._run, n) for n in range(self.threads)]
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()

    def _run(self, worker: int) -> None:
        raise NotImplementedError

"""Storage: checkpoint upload and download MB/s through raylane against plain boto3.

    python -m bench.storage          # about a minute; writes bench/results/storage.json
    python -m bench.storage --quick  # a smoke-sized run

The checkpoint is a real one (`workloads.checkpoint.save_checkpoint`: weights, AdamW train
state and meta, the files of the checkpoint contract) of an MLP of about 100 MB in all, plus a small one
(the digits CNN, a few hundred KB) where round trips, not bandwidth, decide. Both go to the same
SeaweedFS bucket three ways:

- raylane `Storage.upload_dir` / `download_dir` (what the registry and Serve use);
- pyarrow's S3 filesystem, `pyarrow.fs.copy_files`, the way Ray Train persists the checkpoints
  raylane reports (built by `Storage.arrow_filesystem()`);
- boto3 with its defaults: `upload_file` / `download_file` file by file (the baseline).

Each transfer runs REPEATS times, contenders interleaved; the median counts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS_DIR, Result, bench_main, bench_storage, median
from workloads.checkpoint import LAYOUT

REPEATS = 3


def make_checkpoint(directory: Path, hidden: list[int]) -> int:
    """A raylane checkpoint of an MLP with AdamW state; returns its size in bytes."""
    from workloads.checkpoint import save_checkpoint
    from workloads.config import ModelConfig, TrainConfig
    from workloads.models import build_model, model_spec
    from workloads.trust import CodePolicy
    from workloads.worker import make_optimizer

    spec = model_spec(ModelConfig(hidden_sizes=hidden), input_shape=[64], num_classes=10)
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    optimizer = make_optimizer(model, TrainConfig())
    model(torch.zeros(2, 64)).sum().backward()
    optimizer.step()  # creates the moment buffers: the optimizer state is 2x the weights
    save_checkpoint(
        directory,
        model=model,
        meta={"model": spec, "epoch": 1},
        train_state={"epoch": 1, "optimizer": optimizer.state_dict()},
    )
    return sum(p.stat().st_size for p in directory.iterdir())


def boto3_client():
    """boto3 as a user would make it: the default configuration, the same endpoint."""
    import boto3

    from cluster.storage_s3 import s3_endpoint

    return boto3.client("s3", endpoint_url=s3_endpoint())


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def contenders(storage, source: Path, key: str, scratch: Path) -> dict:
    """name -> (upload(), download()) for one checkpoint directory."""
    import pyarrow.fs as pafs

    client = boto3_client()
    fs, root = storage.arrow_filesystem()
    local = pafs.LocalFileSystem()
    files = sorted(p.name for p in source.iterdir())
    bucket, _, prefix = storage.uri.removeprefix("s3://").partition("/")

    def fresh(name: str) -> Path:
        target = scratch / name
        shutil.rmtree(target, ignore_errors=True)
        return target

    def boto3_up():
        for name in files:
            client.upload_file(str(source / name), bucket, f"{prefix}/{key}-boto3/{name}")

    def boto3_down():
        target = fresh("boto3")
        target.mkdir()
        for name in files:
            client.download_file(bucket, f"{prefix}/{key}-boto3/{name}", str(target / name))

    def arrow_up():
        pafs.copy_files(str(source), f"{root}/{key}-arrow", source_filesystem=local,
                        destination_filesystem=fs)  # fmt: skip

    def arrow_down():
        target = fresh("arrow")
        target.mkdir()
        pafs.copy_files(f"{root}/{key}-arrow", str(target), source_filesystem=fs,
                        destination_filesystem=local)  # fmt: skip

    return {
        "boto3": (boto3_up, boto3_down),
        "raylane": (
            lambda: storage.upload_dir(source, f"{key}-raylane", last=(LAYOUT.marker,)),
            lambda: storage.download_dir(f"{key}-raylane", fresh("raylane")),
        ),
        "pyarrow (Ray Train)": (arrow_up, arrow_down),
    }


def measure(storage, source: Path, key: str, size: int, repeats: int) -> dict:
    """{contender: {"upload_MBps", "download_MBps", "upload_s", "download_s"}}."""
    with tempfile.TemporaryDirectory() as scratch:
        ways = contenders(storage, source, key, Path(scratch))
        times = {name: {"upload": [], "download": []} for name in ways}
        for _ in range(repeats):
            for name, (up, down) in ways.items():
                times[name]["upload"].append(timed(up))
                times[name]["download"].append(timed(down))
    out = {}
    for name, t in times.items():
        up, down = median(t["upload"]), median(t["download"])
        out[name] = {
            "upload_s": up,
            "download_s": down,
            "upload_MBps": size / up / 1e6,
            "download_MBps": size / down / 1e6,
        }
    return out


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    large_hidden = [512, 512] if quick else [2048, 2048, 2048]
    repeats = 1 if quick else REPEATS
    result = Result("storage", quick=quick)
    with bench_storage("storage") as storage, tempfile.TemporaryDirectory() as tmp:
        storage.check()
        large, small = Path(tmp) / "large", Path(tmp) / "small"
        sizes = {
            "large": make_checkpoint(large, large_hidden),
            "small": make_checkpoint(small, [64]),
        }
        result.settings = {
            "large_checkpoint": f"MLP {large_hidden}: {sizes['large'] / 1e6:.1f} MB in 3 files",
            "small_checkpoint": f"MLP [64]: {sizes['small'] / 1e3:.0f} KB in 3 files",
            "repeats": repeats,
        }
        print(f"[storage] {result.settings['large_checkpoint']} ...", flush=True)
        result.measurements["large"] = measure(storage, large, "large", sizes["large"], repeats)
        print(f"[storage] {result.settings['small_checkpoint']} ...", flush=True)
        result.measurements["small"] = measure(storage, small, "small", sizes["small"], repeats)

    large = result.measurements["large"]
    small = result.measurements["small"]
    for way in ("upload", "download"):
        contenders = {  # row name -> (contender, label)
            f"checkpoint_{way}": (
                "raylane",
                f"checkpoint {way} MB/s (~{sizes['large'] / 1e6:.0f} MB): raylane vs boto3",
            ),
            f"checkpoint_{way}_ray_train": (
                "pyarrow (Ray Train)",
                f"checkpoint {way} MB/s: Ray Train's pyarrow path vs boto3",
            ),
        }
        for name, (contender, label) in contenders.items():
            result.ratio(
                name,
                label,
                raylane=large[contender][f"{way}_MBps"],
                baseline=large["boto3"][f"{way}_MBps"],
                unit="MB/s",
                goal=">= 0.8",
            )
        # Small checkpoints: time per checkpoint, so lower is better; show boto3 / raylane.
        result.ratio(
            f"small_checkpoint_{way}",
            f"small checkpoint {way}s per second: raylane vs boto3",
            raylane=1 / small["raylane"][f"{way}_s"],
            baseline=1 / small["boto3"][f"{way}_s"],
            unit="/s",
        )
    result.write(out_dir)
    return result


def main(argv=None) -> int:
    return bench_main("storage", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""What checkpointing a large model costs a training step: sync against async upload.

    python -m bench.checkpoint_cost            # about 5 minutes on 2 cores
    python -m bench.checkpoint_cost --quick    # a small model, one pair

The model is an MLP [4096, 4096] on the digits (17.1M parameters): each checkpoint is its
weights (68 MB) and AdamW's state (137 MB), ~205 MB, written every epoch by one worker and
uploaded to SeaweedFS (S3). `train.checkpoint_upload=sync` uploads before the epoch is reported;
`async` writes the files and hands the upload to a background thread, which the next checkpoint
(or the end of the run) waits for (workloads/worker.py: Uploads).

Measured on the worker, not from the controller: `checkpoint_s` is the time rank 0 spends in the
report between the end of evaluation and handing the metrics over (writing the files, and for
sync the upload), reported with the epoch's metrics; `epoch_s` is the epoch's train+validation
time. The row is median(checkpoint_s) / median(epoch_s) over every epoch of every run. The runs
alternate sync, async, sync, async ... (3 pairs), and each run's wall time from `run_training`'s
call to its return (start-up and the last upload included) stands beside it, because async only
moves the upload: the last one is still waited for.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from bench.common import RESULTS_DIR, Result, bench_main, bench_storage, median, start_ray
from bench.train import raylane_run

HIDDEN, QUICK_HIDDEN = [4096, 4096], [512, 512]
EPOCHS, PAIRS = 4, 3


def job(mode: str, hidden: list[int], epochs: int):
    from workloads.config import load_job_config

    return load_job_config(
        "debug",
        [f"name=bench-ckpt-{mode}-{uuid.uuid4().hex[:6]}", f"model.hidden_sizes={hidden}",
         f"train.epochs={epochs}", "train.num_workers=1", "train.cpus_per_worker=1",
         "train.checkpoint_every=1", "train.keep_checkpoints=2",
         f"train.checkpoint_upload={mode}", "train.progress_every_s=0"],
    )  # fmt: skip


def run(*, quick: bool = False, out_dir: Path = RESULTS_DIR) -> Result:
    hidden, epochs, pairs = (QUICK_HIDDEN, 2, 1) if quick else (HIDDEN, EPOCHS, PAIRS)
    result = Result("checkpoint_cost", quick=quick)
    result.settings = {"model": f"mlp {hidden} on digits", "epochs": epochs, "pairs": pairs}
    runs = {"sync": [], "async": []}
    with bench_storage("checkpoint-cost") as storage:
        start_ray()
        for pair in range(pairs):
            for mode in ("sync", "async"):
                print(f"[checkpoint_cost] {mode}, run {pair + 1} of {pairs}", flush=True)
                started = time.perf_counter()
                reports = raylane_run(storage, job(mode, hidden, epochs))
                runs[mode].append({"wall_s": time.perf_counter() - started, "reports": reports})
    result.measurements = runs
    epoch = {m: median(r["epoch_s"] for run in runs[m] for r in run["reports"]) for m in runs}
    cost = {m: median(r["checkpoint_s"] for run in runs[m] for r in run["reports"]) for m in runs}
    wall = {m: median(run["wall_s"] for run in runs[m]) for m in runs}
    spread = {m: f"{min(r['wall_s'] for r in runs[m]):.1f}-{max(r['wall_s'] for r in runs[m]):.1f} s"
              for m in runs}  # fmt: skip
    for mode, goal in (("sync", ""), ("async", "<= 0.05")):
        result.ratio(
            f"checkpoint-{mode}", f"checkpoint time / epoch time on the worker, {mode} upload",
            raylane=cost[mode], baseline=epoch[mode], unit="s", goal=goal,
            note=f"median over {pairs * epochs} epochs",
        )  # fmt: skip
    result.ratio("checkpoint-async-vs-sync", "checkpoint time per epoch: async vs sync upload",
                 raylane=cost["async"], baseline=cost["sync"], unit="s", goal="<= 0.5")  # fmt: skip
    result.ratio("checkpoint-wall", "run wall time (start-up and last upload included): "
                 "async vs sync", raylane=wall["async"], baseline=wall["sync"], unit="s",
                 note=f"async {spread['async']}, sync {spread['sync']}")  # fmt: skip
    result.write(out_dir)
    return result


def main(argv=None) -> int:
    return bench_main("checkpoint_cost", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

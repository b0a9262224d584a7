"""ASHA against random search without early stopping: 27 configurations, several seeds.

    python -m bench.sweep --only asha              # 3 seeds, ~2 minutes on 2 cores
    python -m bench.sweep --only asha --seeds 1 --first-seed 2   # one piece of a longer run

For each seed both searchers get the same 27 configurations of a digits MLP (Tune's
BasicVariantGenerator samples the same ones in the same order from the same seed), in-trial,
two trials at a time, up to MAX_EPOCHS epochs: random search (FIFO) trains every one to the
end, ASHA (grace 1 epoch, reduction factor 3: rungs at 1, 3 and 9 epochs) stops the worse ones
at each rung. The two run interleaved, ASHA first for even seeds and random first for odd ones,
so neither always runs on the machine the other warmed.

Time to target: seconds from before the data is read (the sweep's clock, bench/sweep_timing.py)
until some trial first reports a validation accuracy within EPSILON of the lower of the two
searchers' best: an accuracy both reached. The ratio ASHA / random per seed; the row shows the
median and the spread.
"""

from __future__ import annotations

from bench.common import Result, median, meets
from bench.sweep_timing import time_to_target, timed_sweep

EPSILON = 0.005  # "within half a point of accuracy"
MAX_EPOCHS, SAMPLES = 9, 27


def asha_sweep(*, asha: bool, seed: int, tag: str, quick: bool):
    """The benchmark's sweep: the digits MLP of the debug preset over a wide space."""
    from cluster.config import validate
    from tune.config import SweepConfig

    samples, epochs = (3, 2) if quick else (SAMPLES, MAX_EPOCHS)
    return validate(
        SweepConfig,
        {
            "name": f"bench-{'asha' if asha else 'random'}-{seed}-{tag}",
            "train_config": "debug",
            "overrides": ["train.num_workers=1", "train.cpus_per_worker=0.5"],
            "num_samples": samples,
            "max_concurrent_trials": 2,
            "seed": seed,
            "trial_mode": "in_trial",
            "space": {
                "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                "train.batch_size": {"type": "choice", "values": [32, 64, 128]},
                "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
                "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
            },
            "scheduler": {"asha": asha, "grace_period": 1, "reduction_factor": 3,
                          "max_epochs": epochs},
        },
        source="bench sweep",
    )  # fmt: skip


def run_seed(storage, *, seed: int, tag: str, quick: bool) -> dict:
    """Both searchers on one seed's configurations, in this seed's order."""
    runs = {}
    order = (True, False) if seed % 2 == 0 else (False, True)
    for asha in order:
        sweep = asha_sweep(asha=asha, seed=seed, tag=tag, quick=quick)
        print(f"[sweep] {sweep.name}: {sweep.num_samples} trials ...", flush=True)
        runs["asha" if asha else "random"] = timed_sweep(storage, sweep)
    target = min(runs["asha"]["best"], runs["random"]["best"]) - EPSILON
    for run in runs.values():
        run["time_to_target_s"], run["epochs_to_target"] = time_to_target(
            run["events"], "val_accuracy", target
        )
    ratio = runs["asha"]["time_to_target_s"] / runs["random"]["time_to_target_s"]
    return {"seed": seed, "first": "asha" if order[0] else "random", "target": target,
            "ratio": ratio, "same_configs": runs["asha"]["trial_configs"]
            == runs["random"]["trial_configs"], **runs}  # fmt: skip


def asha_vs_random(result: Result, storage, *, quick: bool, tag: str, seeds: list[int]) -> None:
    done = [run_seed(storage, seed=seed, tag=tag, quick=quick) for seed in seeds]
    sweep = asha_sweep(asha=True, seed=seeds[0], tag=tag, quick=quick)
    result.settings["asha"] = {
        "sweep": f"{sweep.train_config} MLP x {sweep.num_samples} configs, in-trial, "
        f"{sweep.max_concurrent_trials} at a time",
        "space": list(sweep.space), "scheduler": sweep.scheduler.model_dump(),
        "seeds": seeds, "epsilon": EPSILON,
    }  # fmt: skip
    result.measurements["asha"] = done
    ratios = [run["ratio"] for run in done]
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    pick = {name: median([run[name]["time_to_target_s"] for run in done])
            for name in ("asha", "random")}  # fmt: skip
    row = result.ratio(
        "asha_time_to_target",
        f"time to a val_accuracy both reach, {sweep.num_samples} configs x {len(seeds)} seeds: "
        "ASHA vs random (ratio: median of the per-seed ratios; times: medians)",
        raylane=pick["asha"], baseline=pick["random"], unit="s", goal="<= 0.5",
        note=f"per-seed ratios {spread}",
    )  # fmt: skip
    # The row's ratio is the median of each seed's own ratio, not a ratio of two medians.
    row.value = median(ratios)
    row.met = meets(row.value, row.goal)
    for key, label, unit in (("epochs", "epochs trained in all", "epochs"),
                             ("wall_s", "whole sweep wall time", "s")):  # fmt: skip
        result.ratio(
            f"asha_{key}", f"{label}: ASHA vs random (medians over seeds)", unit=unit,
            raylane=median([run["asha"][key] for run in done]),
            baseline=median([run["random"][key] for run in done]),
        )  # fmt: skip

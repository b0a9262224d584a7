"""What every benchmark shares: a local S3 server, the result format, the Markdown table.

    with bench_storage() as storage:          # SeaweedFS on a free port, or the one in $AWS_*
        ...
    result = Result("train", quick=False)
    result.ratio("train_vs_plain", "training samples/s vs plain PyTorch loop",
                 raylane=9100.0, baseline=9500.0, unit="samples/s", goal=">= 0.95")
    result.write(out_dir)                     # <out_dir>/train.json

A ratio is always raylane / baseline; `goal` says which side of it we want (">= 0.95" or
"<= 0.3"), so the table can mark each row met or missed without knowing the metric.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
BENCH_BUCKET = "raylane-bench"


def machine() -> dict[str, Any]:
    """The machine a run was measured on; the load average says how busy it was."""
    import ray
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gib = round(kib / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def bench_storage(prefix: str = "bench"):
    """A Storage on S3 below `prefix`: in $RAYLANE_BENCH_BUCKET ("bucket" or "bucket/prefix")
    on the server named by $AWS_ENDPOINT_URL_S3 when both are set (run_all starts one server
    for all benchmarks; the tests use theirs), else on a fresh SeaweedFS that stops on exit."""
    from cluster.storage import Storage

    if os.environ.get("AWS_ENDPOINT_URL_S3") and os.environ.get("RAYLANE_BENCH_BUCKET"):
        yield Storage(f"s3://{os.environ['RAYLANE_BENCH_BUCKET']}/{prefix}")
        return
    with s3_server() as env:
        yield Storage(f"s3://{env['RAYLANE_BENCH_BUCKET']}/{prefix}")


@contextlib.contextmanager
def s3_server():
    """Start SeaweedFS with throwaway credentials; export its settings while it runs."""
    from cluster.s3server import S3Server, export_env, free_port

    with tempfile.TemporaryDirectory(prefix="raylane-bench-s3-") as data_dir:
        saved = dict(os.environ)
        server = S3Server(data_dir, port=free_port(), bucket=BENCH_BUCKET)
        env = server.start(timeout_s=90)
        env.pop("RAYLANE_STORAGE")
        env["RAYLANE_BENCH_BUCKET"] = BENCH_BUCKET
        export_env(env)
        try:
            yield env
        finally:
            server.stop()
            os.environ.clear()
            os.environ.update(saved)


BENCH_NICENESS = 15  # Ray's own for its workers (raylet worker_niceness)


def equal_priority() -> None:
    """Run everything under test at one CPU priority: Ray starts its workers at niceness 15, so
    a baseline, a load generator or uvicorn left at 0 would win every contested time slice
    from raylane's processes on a busy machine. This process (and all it starts: baselines,
    the load generator, uvicorn, Ray) goes to 15, and Ray is told not to add to it. Call it
    before Ray starts; on an idle machine it changes nothing."""
    os.nice(max(0, BENCH_NICENESS - os.nice(0)))
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray spells it so)


def start_ray() -> None:
    """A fresh local Ray with this machine's CPUs, even where another process has run
    `ray start` here (a plain `ray.init()` would join that cluster and its load)."""
    from cluster.runtime import connect

    connect("local")


@dataclass
class Ratio:
    """One row of the table: raylane / baseline against a goal."""

    name: str
    label: str
    raylane: float
    baseline: float
    unit: str
    goal: str  # ">= 0.95", "<= 0.05", or "" for a number shown without a goal
    value: float = float("nan")
    met: bool | None = None
    note: str = ""

    def __post_init__(self):
        if self.baseline:
            self.value = self.raylane / self.baseline
        self.met = meets(self.value, self.goal)
        if self.goal and math.isnan(self.raylane) and not math.isnan(self.baseline):
            self.met = False  # raylane never got there (e.g. ASHA never reached the target)


def meets(value: float, goal: str) -> bool | None:
    if not goal or value != value:  # no goal, or NaN
        return None
    op, target = goal.split()
    return value >= float(target) if op == ">=" else value <= float(target)


@dataclass
class Result:
    """What a benchmark writes: its settings, raw measurements and the ratios."""

    name: str
    quick: bool
    machine: dict = field(default_factory=machine)
    settings: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)
    seconds: float = 0.0
    started: float = field(default_factory=time.time)

    def ratio(self, name: str, label: str, *, raylane: float, baseline: float, unit: str,
              goal: str = "", note: str = "") -> Ratio:  # fmt: skip
        row = Ratio(name, label, float(raylane), float(baseline), unit, goal, note=note)
        self.ratios.append(row)
        return row

    def write(self, out_dir: Path = RESULTS_DIR) -> Path:
        self.seconds = round(time.time() - self.started, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=_plain) + "\n")
        return path


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# ---------------------------------------------------------------------- the table


def fmt(value: float, unit: str = "") -> str:
    if value != value:
        return "-"
    if unit == "s" or abs(value) < 10:
        text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


def markdown_table(results: list[dict]) -> str:
    """One row per ratio of every benchmark result (the JSON dicts)."""
    lines = [
        "| benchmark | measure | raylane | baseline | ratio | goal | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        for row in result["ratios"]:
            met = {True: "yes", False: "**no**", None: ""}[row["met"]]
            value = "-" if math.isnan(row["value"]) else f"{row['value']:.2f}"
            never = math.isnan(row["raylane"]) and row["met"] is False
            raylane = "never" if never else fmt(row["raylane"], row["unit"])
            lines.append(
                f"| {result['name']} | {row['label']} | {raylane} | "
                f"{fmt(row['baseline'], row['unit'])} | {value} | {row['goal'] or '-'} | {met} |"
            )
    return "\n".join(lines)


def machine_line(info: dict) -> str:
    load = ", ".join(str(x) for x in info.get("load_average", []))
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}; "
        f"Python {info['python']}, torch {info['torch']}, Ray {info['ray']}; "
        f"load average at start {load}"
    )


def bench_main(name: str, run, doc: str | None, argv=None) -> int:
    """The command line every benchmark module shares: --quick, --out, then a Markdown table."""
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    parser.add_argument("--quick", action="store_true", help="smoke-sized run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"where to write {name}.json")
    args = parser.parse_args(argv)
    equal_priority()
    result = run(quick=args.quick, out_dir=args.out)
    print(markdown_table([asdict(result)]))
    return 0

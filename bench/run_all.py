"""Every benchmark side by side in one run: training, serving, sweeps, storage, int8 models.

    make bench                          # = python -m bench.run_all; about 30 minutes on 2 cores
    python -m bench.run_all --quick     # smoke-sized, about a minute or two
    python -m bench.run_all --only train,storage

One SeaweedFS server serves all of them. Each benchmark runs in its own process (its own local
Ray), so one that fails or hangs costs only its own row; its full output goes to
`bench/results/<name>.log`, its numbers to `bench/results/<name>.json`. At the end the ratios
are printed as one Markdown table and written with the machine's description to
`bench/results/summary.md`; a complete full run also puts it into docs/performance.md and the
README's Performance section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import (
    RESULTS_DIR,
    equal_priority,
    machine,
    machine_line,
    markdown_table,
    s3_server,
)

# name -> seconds allowed (full run); the quick run gets a third. The limits sum to 51.5
# minutes; a full run takes about 36 (optimize's one, optimize_train's four, train_memory's one,
# checkpoint_cost's five, serve's interleaved repetitions about six, the sweep about eight: ASHA
# vs random on 27 configurations and 3 seeds ~1.5, three Ray Train sweeps of 8 configs x 8
# epochs ~100 s each; the rest about eleven).
ROOT = Path(__file__).parent.parent
DOCS = (ROOT / "docs" / "performance.md", ROOT / "README.md")  # where the latest table goes
BEGIN, END = "<!-- bench:begin (written by python -m bench.run_all) -->", "<!-- bench:end -->"
BENCHMARKS = {
    "storage": 90,
    "train": 360,
    "serve": 660,
    "sweep": 780,
    "optimize": 120,
    "optimize_train": 420,
    "train_memory": 180,
    "checkpoint_cost": 480,
}


def run_benchmark(name: str, *, quick: bool, out_dir: Path, limit_s: float) -> dict:
    """Run `python -m bench.<name>` with its output in <out_dir>/<name>.log; echo its progress
    lines. Returns {"name", "ok", "seconds", "error"}."""
    command = [sys.executable, "-m", f"bench.{name}", "--out", str(out_dir)]
    if quick:
        command.append("--quick")
    log_path = out_dir / f"{name}.log"
    (out_dir / f"{name}.json").unlink(missing_ok=True)  # a stale result must not pass for new
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        # A benchmark that hangs silently is killed all the same: the timer, not the reader,
        # enforces the limit.
        watchdog = threading.Timer(limit_s, process.kill)
        watchdog.start()
        try:
            for line in process.stdout:
                log.write(line)
                if line.startswith(f"[{name}]"):
                    print(f"  {line.rstrip()}  ({time.monotonic() - started:.0f}s)", flush=True)
            process.wait()
        finally:
            watchdog.cancel()
    error = None
    if time.monotonic() - started >= limit_s:
        error = f"timed out after {limit_s:.0f}s; see {log_path}"
    elif process.returncode != 0:
        error = f"exited with code {process.returncode}; see {log_path}"
    ok = error is None and (out_dir / f"{name}.json").exists()
    return {"name": name, "ok": ok, "seconds": time.monotonic() - started, "error": error}


def summarize(out_dir: Path, runs: list[dict], *, quick: bool, total_s: float) -> str:
    """Write <out_dir>/summary.md from the JSON results; returns its text."""
    results = [
        json.loads((out_dir / f"{run['name']}.json").read_text()) for run in runs if run["ok"]
    ]
    info = results[0]["machine"] if results else machine()
    lines = [
        f"# raylane benchmarks{' (quick, smoke-sized: not representative)' if quick else ''}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} in {total_s / 60:.1f} minutes on: "
        f"{machine_line(info)}.",
        "",
        "Ratios are raylane / baseline; `goal` says which side of it we want.",
        "",
        markdown_table(results),
        "",
    ]
    for run in runs:
        status = "ok" if run["ok"] else f"FAILED: {run['error']}"
        lines.append(f"- `{run['name']}`: {run['seconds']:.0f}s, {status}")
    for result in results:
        for row in result["ratios"]:
            if row.get("note"):
                lines.append(f"- {result['name']} / {row['label']}: {row['note']}")
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(text)
    return text


def update_docs(summary: str, path: Path) -> bool:
    """Put the latest full run's summary between the markers of `path`, if it has them."""
    if not path.exists():
        return False
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    body = summary.split("\n", 2)[2]  # without the summary's own title
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-sized runs")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    equal_priority()  # inherited by the S3 server and every benchmark
    started = time.monotonic()
    runs = []
    with s3_server():  # exported into os.environ, so every benchmark process uses it
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        for name in names:
            print(f"[run_all] {name} ...", flush=True)
            limit = BENCHMARKS[name] / (3 if args.quick else 1)
            runs.append(run_benchmark(name, quick=args.quick, out_dir=args.out, limit_s=limit))
            if not runs[-1]["ok"]:
                print(f"[run_all] {name} FAILED: {runs[-1]['error']}", flush=True)
    text = summarize(args.out, runs, quick=args.quick, total_s=time.monotonic() - started)
    print(text)
    print(f"[run_all] written to {args.out / 'summary.md'}")
    complete = not args.quick and not args.only and all(run["ok"] for run in runs)
    if complete and args.out == RESULTS_DIR:
        for path in DOCS:
            if update_docs(text, path):
                print(f"[run_all] and to {path}")
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

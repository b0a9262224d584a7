"""The whole workflow in one command: data -> sweep -> register -> promote -> serve -> requests.

    raylane pipeline --config digits-sweep --storage s3://raylane
    python -m raylane.pipeline --config digits-sweep --keep-serving     # Ctrl-C stops serving
    ray job submit --working-dir . -- python -m raylane.pipeline --config digits-sweep

Prints a final report (best config, validation metrics, registry version, endpoint URL, sample
predictions, request latency) and writes it to `<storage>/pipelines/<sweep>/report.json`.

It belongs to the orchestration layer (`raylane/`), the only package that imports all others.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from cluster.config import add_common_args
from cluster.errors import RaylaneError, run_cli
from cluster.runtime import connect, ray_log_dir, show_only_raylane_lines, use_code
from cluster.storage import Storage
from serve.app import deploy
from serve.config import ServeArgs
from tune.config import load_sweep_config, sweep_presets
from tune.report import format_table
from tune.space import base_training_config
from tune.sweep import run_sweep
from workloads.checkpoint import input_spec_of, meta_key
from workloads.config import JobConfig
from workloads.data import read_split, resolve
from workloads.registration import report_line
from workloads.tracking import Tracking, add_tracking_args, tracking_from


def step(number: int, total: int, text: str) -> None:
    print(f"\n=== [{number}/{total}] {text}", flush=True)


def run_pipeline(
    *,
    config: str,
    storage: Storage,
    overrides: Sequence[str] = (),
    model_name: str | None = None,
    alias: str = "production",
    host: str = "127.0.0.1",
    port: int = 8000,
    requests: int = 200,
    keep_serving: bool = False,
    address: str | None = None,
    tracking: Tracking | None = None,
) -> dict:
    started = time.monotonic()
    sweep = load_sweep_config(config, list(overrides))
    job = JobConfig.model_validate(base_training_config(sweep))
    name = model_name or job.data.dataset.replace("synthetic-", "")
    storage.check()

    step(1, 5, f"data: {job.data.dataset} -> {storage.uri_for('datasets')}")
    info = resolve(job.data, storage)
    print(f"{info.rows} rows, {info.num_classes} classes at {info.uri}")

    step(2, 5, f"sweep {sweep.name}: {sweep.num_samples} trials of {sweep.train_config}")
    # One line per trial epoch, then the summary: Ray's own output stays in its log files and
    # Tune's tables off the console, so that the report below is what stands out.
    connect(address)
    ray_output = show_only_raylane_lines() or ray_log_dir()
    result = run_sweep(
        sweep, storage, register=name, promote=alias, address=address, tracking=tracking,
        live_table=False,
    )  # fmt: skip
    print(format_table(result, sweep))

    reference = f"{name}@{alias}"
    step(3, 5, f"serve {reference} on http://{host}:{port}")
    endpoint = start_serving(reference, storage, host=host, port=port)

    step(4, 5, f"{requests} sample requests")
    meta = storage.read_json(meta_key(result.best["checkpoint_key"]))
    samples = send_samples(endpoint, meta, count=requests)

    report = {
        "model": name,
        "alias": alias,
        "version": result.registered["version"],
        "endpoint": endpoint,
        "best_trial": result.best["trial"],
        "best_config": result.best["params"],
        "validation_metrics": meta["metrics"],
        "requests": samples,
        "sweep_plot": result.plot_uri,
        "evaluation": report_line(result.registered),  # the report, or why there is none
        "seconds": round(time.monotonic() - started, 1),
        "ray_output": ray_output,
    }
    storage.write_json(f"pipelines/{sweep.name}/report.json", report)
    step(5, 5, "report")
    print(format_report(report))
    if keep_serving:
        wait_until_interrupted(endpoint)
    else:
        stop_serving()
    return report


def start_serving(reference: str, storage: Storage, *, host: str, port: int) -> str:
    """Deploy the Serve app for `reference`; returns the predict URL."""
    args = ServeArgs(model=reference, storage=storage.uri, num_cpus=0.5, watch_interval_s=2.0)
    return deploy(args, host=host, port=port, access_log=False)


def stop_serving() -> None:
    from ray import serve as ray_serve

    ray_serve.shutdown()


def send_samples(endpoint: str, meta: dict, *, count: int) -> dict:
    """POST validation rows one by one; accuracy, latency percentiles, a few predictions."""
    import httpx

    spec = input_spec_of(meta)
    fraction = meta["config"]["data"]["validation_fraction"]
    features, labels = read_split(
        meta["data_uri"], spec, validation_fraction=fraction, split="validation"
    )
    names = spec.class_names
    latencies, correct, shown = [], 0, []
    with httpx.Client(timeout=30) as client:
        for i in range(min(count, len(features))):
            body = {"instances": [features[i].ravel().tolist()]}
            began = time.perf_counter()
            response = client.post(endpoint, json=body)
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RaylaneError(f"{endpoint} answered {response.status_code}: {response.text}")
            answer = response.json()
            predicted, actual = answer["predictions"][0], names[labels[i]]
            correct += predicted == actual
            if len(shown) < 5:
                confidence = max(answer["probabilities"][0])
                shown.append(
                    {
                        "predicted": predicted,
                        "actual": actual,
                        "confidence": round(confidence, 4),
                        "version": answer["version"],
                    }
                )
    return {
        "count": len(latencies),
        "accuracy": correct / max(len(latencies), 1),
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "examples": shown,
    }


def format_report(report: dict) -> str:
    metrics, requests = report["validation_metrics"], report["requests"]
    lines = [
        f"model            {report['model']}:{report['version']} ({report['model']}@{report['alias']})",
        f"endpoint         {report['endpoint']}",
        f"best trial       {report['best_trial']}: "
        + ", ".join(f"{k}={v}" for k, v in report["best_config"].items()),
        f"validation       accuracy {metrics['val_accuracy']:.4f}  f1 {metrics['val_f1_macro']:.4f}"
        f"  auc {metrics['val_auc_roc']:.4f}  loss {metrics['val_loss']:.4f}",
        f"HTTP requests    {requests['count']} sent, accuracy {requests['accuracy']:.4f}, "
        f"latency p50 {requests['latency_ms_p50']:.1f} ms, p99 {requests['latency_ms_p99']:.1f} ms",
        "sample predictions:",
    ]
    for example in requests["examples"]:
        lines.append(
            f"  predicted {example['predicted']!s:<10} actual {example['actual']!s:<10} "
            f"confidence {example['confidence']:.3f}  (version {example['version']})"
        )
    lines.append(f"sweep plot       {report['sweep_plot']}")
    lines.append(report["evaluation"])
    lines.append(f"total time       {report['seconds']:.0f}s")
    if report.get("ray_output"):
        lines.append(f"Ray's output     {report['ray_output']}")
    return "\n".join(lines)


def wait_until_interrupted(endpoint: str) -> None:
    print(f"\nserving at {endpoint}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop_serving()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane pipeline",
        description="Prepare data, sweep, register and promote the best model, serve it, send "
        "sample requests, and print a report.",
    )
    parser.add_argument(
        "--config",
        default="digits-sweep",
        help=f"sweep preset ({', '.join(sweep_presets())}) or YAML file (default digits-sweep)",
    )
    add_common_args(parser, overrides="override a sweep field, e.g. --set num_samples=4")
    parser.add_argument("--model-name", help="registry name (default: the dataset's name)")
    parser.add_argument("--alias", default="production", help="alias to promote (production)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--requests", type=int, default=200, help="sample requests to send")
    parser.add_argument("--keep-serving", action="store_true", help="serve until Ctrl-C")
    add_tracking_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_code(args.working_dir, args.py_modules)
    report = run_pipeline(
        config=args.config,
        storage=Storage.from_uri(args.storage),
        overrides=args.set,
        model_name=args.model_name,
        alias=args.alias,
        host=args.host,
        port=args.port,
        requests=args.requests,
        keep_serving=args.keep_serving,
        address=args.address,
        tracking=tracking_from(args),
    )
    print(json.dumps({"version": report["version"], "endpoint": report["endpoint"]}))
    return 0


if __name__ == "__main__":
    run_cli(main)

"""The rows of the serving benchmark (bench/serve.py) from its measurements: medians of the
interleaved repetitions, each with its spread, and a detail table of every level.

    report(result, workloads)          # adds the ratio rows to `result`
    print(detail_table(result.measurements))
"""

from __future__ import annotations

from bench.common import Result, median

NAMES = {"serve": "Serve (HTTP proxy)", "direct": "Serve (direct ingress)"}


def series(levels: list[dict], key: str) -> list[float]:
    return [level.get(key, float("nan")) for level in levels]


def spread(values: list[float], digits: int = 0) -> str:
    values = [v for v in values if v == v]
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else "-"


def pair_rows(result: Result, phase: dict, contender: str, workload) -> None:
    """Contender vs FastAPI and vs the raw forward at the batch it reached, for one level."""
    ours, base = (
        phase["levels"][contender][workload.label],
        phase["levels"]["fastapi"][workload.label],
    )
    unit, key = ("req/s", "requests_per_s") if workload.instances == 1 else ("rows/s", "rows_per_s")
    name, what = NAMES[contender], f"{unit}, {workload.label}"
    pairs = [a / b for a, b in zip(series(ours, key), series(base, key), strict=True) if b]
    slug = f"{contender}_{workload.instances}row_c{workload.concurrency}"
    result.ratio(
        f"{slug}_vs_fastapi",
        f"{what}: {name} vs FastAPI + the same Batcher, median of {len(ours)} interleaved pairs",
        raylane=median(series(ours, key)),
        baseline=median(series(base, key)),
        unit=unit,
        goal=">= 0.8" if workload.instances == 1 else "",
        note=f"spread {unit}: {contender} {spread(series(ours, key))}, fastapi "
        f"{spread(series(base, key))}; pair ratios {', '.join(f'{r:.2f}' for r in pairs)}",
    )
    for label, levels in ((contender, ours), ("fastapi", base)):
        if label == "fastapi" and contender != "serve":
            continue  # the baseline's own row once, in phase one
        rows = series(levels, "rows_per_batch")
        result.ratio(
            f"{slug}_{label}_vs_raw",
            f"rows/s, {workload.label}: {NAMES.get(label, 'FastAPI + Batcher')} vs the raw forward on "
            f"the batches it ran ({median(rows):.1f} rows on average)",
            raylane=median(series(levels, "rows_per_s")),
            baseline=median(series(levels, "raw_rows_per_s")),
            unit="rows/s",
            goal=">= 0.7" if label != "fastapi" and workload.instances == 1 else "",
            note=f"rows per batch {spread(rows, 1)}; raw rows/s "
            f"{spread(series(levels, 'raw_rows_per_s'))}",
        )


def report(result: Result, workloads: list) -> None:
    measured = result.measurements
    for phase_name, contender in (("proxy", "serve"), ("direct", "direct")):
        phase = measured.get(phase_name)
        if not phase:
            continue
        for workload in workloads:
            batching = workload.concurrency > 1 or workload.instances > 1
            if batching and not workload.rate and workload.label in phase["levels"][contender]:
                pair_rows(result, phase, contender, workload)
    proxy = measured["proxy"]
    levels = proxy["levels"]
    first = workloads[0].label  # the lowest concurrency
    result.ratio(
        "serve_latency_low_load",
        f"p50 latency, {first}: Serve (HTTP proxy) vs FastAPI + Batcher",
        raylane=median(series(levels["serve"][first], "p50_ms")),
        baseline=median(series(levels["fastapi"][first], "p50_ms")),
        unit="ms",
        note=f"spread ms: serve {spread(series(levels['serve'][first], 'p50_ms'), 1)}, fastapi "
        f"{spread(series(levels['fastapi'][first], 'p50_ms'), 1)}",
    )
    for workload in workloads:
        if workload.rate:
            serve, fastapi = levels["serve"][workload.label], levels["fastapi"][workload.label]
            result.ratio(
                "serve_open_loop_p99",
                f"p99 latency, {workload.label}: Serve (HTTP proxy) vs FastAPI + Batcher",
                raylane=median(series(serve, "p99_ms")),
                baseline=median(series(fastapi, "p99_ms")),
                unit="ms",
                note=f"spread ms: serve {spread(series(serve, 'p99_ms'))}, fastapi "
                f"{spread(series(fastapi, 'p99_ms'))}",
            )
    protocol_row(result, proxy["grpc_vs_http"])
    cold = proxy.get("cold_start_s", [])
    result.ratio(
        "serve_cold_start",
        "seconds to answer a request at zero replicas (scale to zero) vs a warm replica's p50",
        raylane=median(cold),
        baseline=median(series(levels["serve"][first], "p50_ms")) / 1000,
        unit="s",
        note=f"cold starts (s): {', '.join(f'{s:.1f}' for s in cold)}"
        if cold
        else "not in --quick",
    )


def protocol_row(result: Result, pairs: dict) -> None:
    rates = {k: series(pairs[k], "requests_per_s") for k in ("grpc", "http")}
    result.ratio(
        "serve_grpc_vs_http",
        f"req/s, 1 row, c={pairs['http'][0]['concurrency']}: gRPC v2 ModelInfer vs HTTP v1 "
        f"predict (Serve, batching), median of {len(rates['grpc'])} interleaved pairs",
        raylane=median(rates["grpc"]),
        baseline=median(rates["http"]),
        unit="req/s",
        note=f"spread req/s: grpc {spread(rates['grpc'])}, http {spread(rates['http'])}",
    )


def detail_table(measured: dict) -> str:
    """Every level of every contender: median req/s, rows/s, p50, rows per batch, raw rows/s
    at that batch, with the spread of req/s."""
    lines = [
        "| phase | workload | contender | req/s (spread) | rows/s | p50 ms | p99 ms "
        "| rows/batch | raw rows/s at that batch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase_name, phase in measured.items():
        for contender, by_workload in phase["levels"].items():
            for workload, levels in by_workload.items():
                rps = series(levels, "requests_per_s")
                cells = [f"{median(series(levels, k)):.{d}f}" for k, d in (
                    ("rows_per_s", 0), ("p50_ms", 1), ("p99_ms", 1), ("rows_per_batch", 1),
                    ("raw_rows_per_s", 0))]  # fmt: skip
                lines.append(
                    f"| {phase_name} | {workload} | {contender} | {median(rps):.0f} "
                    f"({spread(rps)}) | {' | '.join(cells)} |"
                )
    return "\n".join(lines)

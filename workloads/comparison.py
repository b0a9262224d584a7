"""What a model costs to keep and to run, and the side-by-side table of `compare`.

    raylane models compare digits:3 digits:4        # parent and its int8 child, same rows
    latency = measure_latency(models, batch_sizes=(1, 32), rounds=3)
    print(format_comparison(compare_versions(registry, refs)))

Latency is in-process (no HTTP): the forward pass of each model on random inputs of its input
spec (its cost does not depend on the values), on one thread, as a Serve replica with less
than 2 CPUs runs (Ray sets OMP_NUM_THREADS=1 there; on this busy 2-core machine two torch
threads made a 256x256 MLP's batch of 32 take 54 ms instead of 0.3). Models are interleaved
A, B, A, B round by round so that other load slows them alike, each measurement long enough to
average out the timer, the median over rounds reported with the spread. The benchmark
(bench/optimize.py) calls the same function with more rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from cluster.text import format_table
from workloads.checkpoint import InputSpec
from workloads.inference import Model
from workloads.report import HEADLINE


def random_inputs(spec: InputSpec, rows: int, *, seed: int = 0) -> torch.Tensor:
    """A batch shaped like the model's input: standard normal floats (features after
    normalization), or token ids 1..vocab-1 with no padding."""
    generator = np.random.default_rng(seed)
    if spec.tokens:
        tokens = generator.integers(1, max(2, spec.vocab_size or 2), size=(rows, *spec.shape))
        return torch.as_tensor(tokens, dtype=torch.int64)
    return torch.as_tensor(generator.standard_normal((rows, *spec.shape)), dtype=torch.float32)


def measure_latency(
    models: Sequence[Model], *, batch_sizes: Sequence[int] = (1, 32), rounds: int = 3,
    seconds: float = 0.1,
) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """{model name: {str(batch size): {"median", "min", "max"}}}: milliseconds per forward pass,
    each of `rounds` measurements about `seconds` long, the models interleaved."""
    inputs = {size: random_inputs(models[0].spec, size) for size in batch_sizes}
    samples = {model.name: {str(size): [] for size in batch_sizes} for model in models}
    with torch.inference_mode(), one_thread():
        for _ in range(rounds):
            for size in batch_sizes:
                for model in models:
                    samples[model.name][str(size)].append(
                        _time(model.module, inputs[size], seconds)
                    )
    return {
        name: {size: _spread(times) for size, times in by_size.items()}
        for name, by_size in samples.items()
    }


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread meanwhile; ONNX Runtime sessions created meanwhile take one too
    (workloads/onnx_int8.py follows torch's setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _time(module: torch.nn.Module, batch: torch.Tensor, seconds: float) -> float:
    """Milliseconds per call, over as many calls as fit in about `seconds` (at least 3)."""
    start = time.perf_counter()
    module(batch)  # also warms up: the first call may allocate
    calls = max(3, int(seconds / max(time.perf_counter() - start, 1e-6)))
    start = time.perf_counter()
    for _ in range(calls):
        module(batch)
    return (time.perf_counter() - start) / calls * 1e3


def _spread(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def format_comparison(comparison: dict) -> str:
    """The metrics table, one column per version, then size and latency (with the ratio to the
    first version), then each version's accuracy against the first."""
    names = list(comparison["metrics"])
    rows = [[key, *(_number(comparison["metrics"][n][key]) for n in names)] for key in HEADLINE]
    rows += _cost_rows(comparison.get("footprint") or {}, names)
    lines = [
        f"{comparison['rows']} rows: {comparison['data']}",
        "",
        format_table(["metric", *names], rows, rule=True),
        "",
    ]
    lines += [pair["statement"] for pair in comparison["comparisons"]]
    lines += [f"note: {note}" for note in comparison["notes"]]
    return "\n".join(lines)


def _cost_rows(footprint: dict, names: list[str]) -> list[list[str]]:
    if not footprint:
        return []
    costs = {
        "parameters": {n: footprint[n]["parameters"] for n in names},
        "bytes on disk": {n: footprint[n]["bytes"] for n in names},
    }
    for size in footprint[names[0]].get("latency_ms", {}):
        costs[f"latency ms, batch {size}"] = {
            n: footprint[n]["latency_ms"][size]["median"] for n in names
        }
    return [[label, *(_with_ratio(v[n], v[names[0]], n == names[0]) for n in names)]
            for label, v in costs.items()]  # fmt: skip


def _with_ratio(value: float, first: float, is_first: bool) -> str:
    text = f"{value:,}" if isinstance(value, int) else f"{value:.3f}"
    return text if is_first or not first else f"{text} ({value / first:.2f}x)"


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"

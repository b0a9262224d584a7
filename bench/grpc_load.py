"""A gRPC load generator for the Open Inference Protocol v2: bench/loadgen.py's closed loop, with
grpcio's asyncio client sending ModelInfer instead of HTTP POSTs. Only for 127.0.0.1.

    python -m bench.grpc_load --target 127.0.0.1:9000 --model m --features 512 \\
        --concurrency 32 --duration 5 --warmup 1

Prints one JSON list, one entry per level, in loadgen's format (requests/s, p50/p99/mean ms,
errors): only requests sent after the warm-up and answered inside the measured window count,
so the two generators measure the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.loadgen import REQUEST_TIMEOUT_S, summary


def infer_request(model: str, features: int):
    import numpy as np

    from serve.proto import grpc_predict_v2_pb2 as pb

    row = np.random.default_rng(1).normal(size=features).round(4).tolist()
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, features],
        contents=pb.InferTensorContents(fp32_contents=row),
    )  # fmt: skip
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


async def closed_loop(target: str, request, *, concurrency: int, duration: float,
                      warmup: float) -> dict:  # fmt: skip
    """`concurrency` clients on one channel (HTTP/2 multiplexes them), each sending its next
    request when the last one is answered."""
    import grpc

    from serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        infer = GRPCInferenceServiceStub(channel).ModelInfer
        start = time.perf_counter()
        measure_from, stop = start + warmup, start + warmup + duration

        async def client():
            nonlocal errors
            while (sent := time.perf_counter()) < stop:
                try:
                    await infer(request, timeout=REQUEST_TIMEOUT_S)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                done = time.perf_counter()
                if sent >= measure_from and done <= stop:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return summary(latencies, errors, duration, mode="closed", concurrency=concurrency)


async def run_levels(target: str, request, *, concurrency: list[int], duration: float,
                     warmup: float) -> list[dict]:  # fmt: skip
    return [
        await closed_loop(target, request, concurrency=c, duration=duration, warmup=warmup)
        for c in concurrency
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of Serve's gRPC proxy")
    parser.add_argument("--model", required=True, help="the model's name")
    parser.add_argument("--features", type=int, required=True, help="features per row")
    parser.add_argument("--concurrency", default="1,8,32", help="closed-loop levels, e.g. 1,8,32")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    if args.target.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost"):
        raise SystemExit("the load generator only targets 127.0.0.1")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    request = infer_request(args.model, args.features)
    results = asyncio.run(
        run_levels(
            args.target, request, concurrency=levels, duration=args.duration, warmup=args.warmup
        )  # fmt: skip
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

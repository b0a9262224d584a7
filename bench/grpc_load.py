"""A gRPC load generator for the Open Inference Protocol v2: bench/loadgen.py's closed loop, with
grpcio's asyncio client sending ModelInfer instead of HTTP POSTs. Only for 127.0.0.1.

    python -m bench.grpc_load --target 127.0.0.1:9000 --model m --features 512 \\
        --concurrency 32 --duration 5 --warmup 1

Prints one JSON list, one entry per level, in loadgen's format (requests/s, p50/p99/mean ms,
errors), counted by the same code (bench.loadgen's Window and closed loop): requests completed
inside the measured window, so the two generators measure the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.loadgen import REQUEST_TIMEOUT_S, Window, drive_clients


def infer_request(model: str, features: int):
    import numpy as np

    from serve.proto import grpc_predict_v2_pb2 as pb

    row = np.random.default_rng(1).normal(size=features).round(4).tolist()
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, features],
        contents=pb.InferTensorContents(fp32_contents=row),
    )  # fmt: skip
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


class Caller:
    """One client of the shared closed loop (bench.loadgen.drive_clients) on a shared channel."""

    def __init__(self, infer, request):
        self.infer, self.request = infer, request

    async def ok(self) -> bool:
        import grpc

        try:
            await self.infer(self.request, timeout=REQUEST_TIMEOUT_S)
            return True
        except grpc.aio.AioRpcError:
            return False

    def close(self) -> None:
        pass  # the channel is closed once, by closed_loop


async def closed_loop(target: str, request, *, concurrency: int, duration: float,
                      warmup: float) -> dict:  # fmt: skip
    """`concurrency` clients on one channel (HTTP/2 multiplexes them), each sending its next
    request when the last one is answered, counted by loadgen's Window."""
    import grpc

    from serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    async with grpc.aio.insecure_channel(target) as channel:
        infer = GRPCInferenceServiceStub(channel).ModelInfer
        window = Window(warmup=warmup, duration=duration)
        await drive_clients([Caller(infer, request) for _ in range(concurrency)], window)
    return window.summary(mode="closed", concurrency=concurrency)


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

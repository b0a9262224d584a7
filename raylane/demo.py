"""`make demo`: the quickstart on a fresh machine, with no cluster and no cloud account.

    make demo                       # = python -m raylane.demo

Starts a local S3 server (SeaweedFS on 127.0.0.1), runs the pipeline on the digits preset
against it (data -> sweep with ASHA -> register -> promote -> serve -> HTTP requests), prints
the report, and stops everything it started. Artifacts stay in .raylane/demo-s3 for a look
afterwards (`raylane storage up --dir .raylane/demo-s3` serves them again).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from cluster.errors import run_cli
from cluster.s3server import S3Server, export_env, free_port
from cluster.storage import Storage
from raylane.pipeline import run_pipeline

DEMO_DIR = ".raylane/demo-s3"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="digits-sweep", help="sweep preset (digits-sweep)")
    parser.add_argument("--keep-serving", action="store_true", help="serve until Ctrl-C")
    args = parser.parse_args(argv)

    # `kill` (SIGTERM) unwinds like Ctrl-C, so the finally below still stops what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = S3Server(DEMO_DIR, port=free_port(), bucket="raylane")
    print(f"starting a local S3 server (SeaweedFS) in {server.data_dir}", flush=True)
    export_env(server.start())  # a profile, no secret: Ray copies AWS_* keys around
    try:
        storage = Storage(f"s3://{server.bucket}/demo")
        report = run_pipeline(
            config=args.config, storage=storage, port=free_port(), keep_serving=args.keep_serving
        )
        print(
            f"\ndemo finished: {report['model']}:{report['version']} served with validation "
            f"accuracy {report['validation_metrics']['val_accuracy']:.4f}; artifacts in "
            f"{storage.uri} (SeaweedFS data in {server.data_dir})"
        )
    finally:
        import ray

        ray.shutdown()
        server.stop()
        print("stopped the local S3 server and Ray")
    return 0


if __name__ == "__main__":
    run_cli(main)

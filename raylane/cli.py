"""The `raylane` command: a thin dispatcher; each subcommand lives in its own module.

    raylane storage up                 # local S3 server (SeaweedFS) on 127.0.0.1
    raylane data prepare digits        # embedded dataset -> Parquet in storage
    raylane train --config digits-cnn  # Ray Train job (same as python -m workloads.train)
    raylane sweep --config digits-sweep --register digits --promote production
    raylane models list
    raylane serve --model digits@production
    raylane rollout start digits:4 --alias production --steps 10,50,100 --step-seconds 60
    raylane predict --model digits@production --input samples.json
    raylane pipeline --config digits-sweep
    raylane --version

Every subcommand has --help. User errors print one line and exit 2. The jobs (train, sweep,
serve, predict) are modules of their own packages so that `ray job submit -- python -m ...`
runs them without this package; the commands that combine packages live in `raylane/`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from cluster.errors import run_cli

COMMANDS = {
    "storage": ("cluster.s3server", "run a local S3 server (SeaweedFS) for development"),
    "data": ("raylane.data", "write an embedded dataset to storage as Parquet"),
    "train": ("workloads.train", "train a model with Ray Train; checkpoints go to storage"),
    "sweep": ("tune.sweep", "sweep hyperparameters with Ray Tune; register the best model"),
    "models": ("raylane.models", "list, show, promote and roll back registered models"),
    "serve": ("serve.app", "serve a registered model over HTTP with Ray Serve"),
    "optimize": ("workloads.optimize", "quantize, prune or distill a registered model"),
    "rollout": ("raylane.rollout", "canary rollout of a version, rolled back on errors or latency"),
    "predict": ("serve.predictor", "predict with a registered model in this process"),
    "pipeline": ("raylane.pipeline", "data -> sweep -> register -> promote -> serve, end to end"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("raylane")
    except PackageNotFoundError:
        return "unknown (not installed)"


def usage() -> str:
    lines = ["usage: raylane COMMAND [--help] ...", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Storage: --storage URI or $RAYLANE_STORAGE (default ./artifacts)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"raylane {version()}")
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    run_cli(module.main, rest)


if __name__ == "__main__":
    main()

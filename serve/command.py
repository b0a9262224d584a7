"""`raylane serve`: deploy the serving app on a local or running Ray and serve in the foreground.

    raylane serve --model digits@production                 # one model: serve/app.py
    raylane serve --models digits@production,wine:3 --max-models-per-replica 2 \
        --app-name models --route-prefix /models           # many: serve/multi.py
    raylane serve --model digits@production --grpc-port 9000 --min-replicas 0 --max-replicas 2

Flags are generated from ServeArgs (serve/config.py), so they have the names, defaults and help
of serve/config.yaml's args. Every model is resolved (and a single model loaded) before Ray
starts: a missing alias or a corrupt version is one line, not a replica's traceback. Ctrl-C or
SIGTERM deletes the app (only this app: another app name on the same Serve stays).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from collections.abc import Sequence

from ray import serve as ray_serve

from cluster.config import add_common_args
from cluster.runtime import connect, use_code
from cluster.storage import Storage
from serve.app import deploy
from serve.config import ALL_MODELS, ServeArgs
from serve.grpc_proxy import grpc_address
from serve.predictor import Predictor
from serve.scale_to_zero import report_cold_starts
from workloads.checkpoint import open_registry
from workloads.trust import add_allow_flag

CLI_SETTINGS = (
    "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests",
    "num_replicas", "num_cpus", "num_gpus", "max_body_bytes", "max_instances", "watch_interval_s",
    "max_models_per_replica", "app_name", "route_prefix",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylane serve",
        description="Serve registered models over HTTP with Ray Serve (foreground; Ctrl-C stops).",
    )
    add = parser.add_argument
    add("--model", help="NAME@ALIAS (follows the alias), NAME:VERSION or NAME")
    add("--models", help=ServeArgs.model_fields["models"].description + " (instead of --model)")
    add_common_args(parser, overrides=None)
    add("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0 for all)")
    add("--port", type=int, default=8000, help="HTTP port (default 8000)")
    add("--grpc-port", type=int, help="serve the v2 gRPC API on this port too (default: off)")
    for name, field in ServeArgs.model_fields.items():
        if name in CLI_SETTINGS:  # the same names, defaults and help as serve/config.yaml args
            flag, default = f"--{name.replace('_', '-')}", field.default
            add(flag, type=type(default), default=default, help=f"{field.description} ({default})")
    add("--max-replicas", type=int, help="autoscale between --min-replicas and this")
    add(
        "--min-replicas",
        type=int,
        default=1,
        help="with --max-replicas (default 1; 0: scale to zero when idle, serve/scale_to_zero.py)",
    )
    add("--target-ongoing-requests", type=float, default=2.0, help="autoscaling target per replica")
    add("--api-key-env", default="RAYLANE_API_KEY", help="env var holding the API key, if set")
    add_allow_flag(parser, dest="custom_model_modules")
    return parser


def parse_command(argv: Sequence[str] | None) -> tuple[ServeArgs, dict]:
    """argv -> (the app's ServeArgs, {"host", "port", "grpc_port", "address"}); checks the
    settings, touches nothing."""
    options = vars(parser().parse_args(argv))
    where = {key: options.pop(key) for key in ("host", "port", "grpc_port", "address")}
    use_code(options.pop("working_dir"), options.pop("py_modules"))
    autoscaling = {
        "min_replicas": options.pop("min_replicas"),
        "max_replicas": options.pop("max_replicas"),
        "target_ongoing_requests": options.pop("target_ongoing_requests"),
    }
    if autoscaling["max_replicas"] is not None:
        options["autoscaling_config"] = autoscaling
    options = {key: value for key, value in options.items() if value is not None}
    return ServeArgs.parse(options), where


def check_models(args: ServeArgs, storage: Storage) -> tuple[str, str]:
    """Resolve what the app will serve before Ray starts (and load a single model): a missing,
    corrupt or refused model is one line now. Returns (what is served, its short name), for
    the console."""
    registry = open_registry(storage)
    if args.models == [ALL_MODELS]:
        count = len(registry.models())
        return f"every model of the registry ({count} now), each at its latest", args.app_name
    if args.models:
        resolved = [f"{ref} -> {registry.resolve(ref)[1]}" for ref in args.models]
        return ", ".join(resolved), args.app_name
    name, version = registry.resolve(args.model)
    Predictor.load_version(registry, name, version, allow_modules=args.custom_model_modules)
    return f"{name}:{version} ({args.model})", f"{name}:{version}"


def warn_if_open(api_key_env: str | None) -> None:
    """A key variable that is set but empty turns authentication off: say so, loudly."""
    if api_key_env and api_key_env in os.environ and not os.environ[api_key_env]:
        print(f"warning: {api_key_env} is set but empty: serving WITHOUT an API key", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args, where = parse_command(argv)
    storage = Storage.from_uri(args.storage)
    storage.check()
    served, label = check_models(args, storage)
    warn_if_open(args.api_key_env)
    args = args.model_copy(update={"storage": storage.uri})

    connect(where["address"])
    # SIGTERM (kill, a process manager) stops like Ctrl-C: Ray's own exit on an unhandled
    # SIGTERM ends in a C++ abort dump and leaves the app deployed. Set right after ray.init
    # (which installs Ray's handlers): the app answers before deploy() returns, and a SIGTERM
    # sent as soon as it answers came in before a handler set after deploy (test_jobs).
    signal.signal(signal.SIGTERM, _interrupt)
    deployed = False
    stops = []  # scale to zero: the cold-start reporter's stop (serve/scale_to_zero.py)
    deployment = "ModelPool" if args.models else "ModelServer"

    def watch_cold_starts() -> None:
        stops.append(report_cold_starts(args.app_name, label, deployment=deployment))

    zero = (args.autoscaling_config or {}).get("min_replicas") == 0
    started = watch_cold_starts if zero else None
    host, port, grpc_port = where["host"], where["port"], where["grpc_port"]
    try:
        url = deploy(args, host=host, port=port, grpc_port=grpc_port, started=started)
        deployed = True
        print(f"serving {served} at {url}")
        if grpc_port:
            print(f"gRPC (Open Inference Protocol v2) at {grpc_address(host, grpc_port)}")
        print(f"docs at {url.split('/v1/')[0]}/docs; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C must not leave a trace
            for stop in stops:
                stop()
            if deployed:
                ray_serve.delete(args.app_name)
            else:  # interrupted while deploying
                ray_serve.shutdown()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt

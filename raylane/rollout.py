"""`raylane rollout`: send a new version a growing share of live traffic, rolled back by itself.

    raylane rollout start digits:2 --alias production --steps 10,25,50,100 --step-seconds 60 \
        --max-error-rate 0.01 --max-latency-ratio 1.5 [--sticky-header X-Client-Id]
    raylane rollout status digits [--json]
    raylane rollout abort digits
    raylane rollout resume digits

`start` needs the app serving `digits@production` on a running Ray cluster (`raylane serve`, or
`--address`): it writes the rollout record beside the registry and starts the controller, a
detached actor that outlives this command (serve/rollout.py). `status` and `abort` only read and
write the record in storage, so they work from anywhere that reaches it; `resume` starts a new
controller for a running rollout whose controller died. The rules (steps, bounds, stickiness)
are in serve/traffic.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone

from cluster.config import STORAGE_HELP, validate
from cluster.errors import ConfigError, RaylaneError, run_cli
from cluster.registry import ModelRef
from cluster.storage import Storage
from serve.rollout import read_state, start_controller, update_state, write_state
from serve.traffic import LIVE, RolloutState, record_event
from workloads.checkpoint import open_registry


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", metavar="URI", default=argparse.SUPPRESS, help=STORAGE_HELP)
    parser = argparse.ArgumentParser(
        prog="raylane rollout",
        description="Canary rollouts: a new version gets a growing share of live traffic and is "
        "rolled back by itself when its errors or latency break the bounds.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser("start", parents=[common], help="start rolling out a version")
    start.add_argument("ref", metavar="NAME:VERSION", help="the candidate, e.g. digits:4")
    start.add_argument("--alias", required=True, help="the alias served now, e.g. production")
    start.add_argument(
        "--steps", default="10,25,50,100", help="candidate shares in percent (default 10,25,50,100)"
    )
    start.add_argument("--step-seconds", type=float, default=60.0, help="seconds per step (60)")
    start.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="how far the candidate's 5xx rate may exceed the current version's (0.01)",
    )
    start.add_argument(
        "--max-latency-ratio",
        type=float,
        default=1.5,
        help="candidate p99 latency / current version's p99 allowed (1.5)",
    )
    start.add_argument(
        "--sticky-header", help="route by a hash of this header's value, e.g. X-Client-Id"
    )
    start.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or auto)")
    status = commands.add_parser("status", parents=[common], help="where a rollout stands")
    status.add_argument("name", metavar="NAME", help="model name, e.g. digits")
    status.add_argument("--json", action="store_true", help="print the stored record as JSON")
    abort = commands.add_parser("abort", parents=[common], help="all traffic back, alias kept")
    abort.add_argument("name", metavar="NAME", help="model name, e.g. digits")
    resume = commands.add_parser(
        "resume", parents=[common], help="a new controller for a running rollout"
    )
    resume.add_argument("name", metavar="NAME", help="model name, e.g. digits")
    resume.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = Storage.from_uri(getattr(args, "storage", None))
    storage.check()
    handler = {"start": _start, "status": _status, "abort": _abort, "resume": _resume}
    return handler[args.command](storage, args)


def new_state(storage: Storage, args) -> RolloutState:
    """The record of a rollout of `args.ref` onto its alias, checked against the registry."""
    ref = ModelRef.parse(args.ref)
    if ref.version is None:
        raise ConfigError(f"rollout start takes NAME:VERSION (e.g. {ref.name}:4), got {args.ref}")
    registry = open_registry(storage)
    _, baseline = registry.resolve(ModelRef(ref.name, alias=args.alias))
    registry.resolve(ref)  # NotFoundError naming the versions there are
    if baseline == ref.version:
        raise ConfigError(f"{ref.name}@{args.alias} already points at version {ref.version}")
    steps = [part.strip() for part in args.steps.split(",")]
    now = time.time()
    values = {
        "model": ref.name, "alias": args.alias, "baseline": baseline, "candidate": ref.version,
        "steps": steps, "step_seconds": args.step_seconds, "max_error_rate": args.max_error_rate,
        "max_latency_ratio": args.max_latency_ratio, "sticky_header": args.sticky_header,
        "started_at": now, "step_started_at": now,
    }  # fmt: skip
    state = validate(RolloutState, values, source="rollout")
    record_event(state, "start", at=now)
    return state


def _start(storage: Storage, args) -> int:
    state = new_state(storage, args)
    current, token = read_state(storage, state.model)
    if current is not None and current.status in LIVE:
        raise RaylaneError(
            f"a rollout of {state.model} is running ({current.summary()}); wait for it, or stop "
            f"it with `raylane rollout abort {state.model}` (a dead controller: `raylane rollout "
            f"resume {state.model}`)"
        )
    _connect(args.address)
    if not write_state(storage, state, token):
        raise RaylaneError(f"another rollout of {state.model} was started meanwhile; see status")
    start_controller(storage.uri, state.model)
    print(f"rollout started: {state.summary()}")
    print(
        f"steps {state.steps} every {state.step_seconds:g} s; `raylane rollout status {state.model}`"
    )
    return 0


def _resume(storage: Storage, args) -> int:
    state, _ = read_state(storage, args.name)
    if state is None or state.status not in LIVE:
        shown = state.summary() if state else "none was started"
        raise RaylaneError(f"no running rollout of {args.name} to resume ({shown})")
    _connect(args.address)
    started = start_controller(storage.uri, args.name)
    print(("resumed: " if started else "its controller is running: ") + state.summary())
    return 0


def _abort(storage: Storage, args) -> int:
    def abort(state: RolloutState) -> None:
        if state.status == "promoting":
            raise RaylaneError(
                f"the rollout of {args.name} is moving @{state.alias} to version "
                f"{state.candidate} right now; afterwards, move it back with `raylane models "
                f"rollback {args.name} --alias {state.alias}`"
            )
        if state.status != "running":
            raise RaylaneError(f"the rollout of {args.name} is over: {state.summary()}")
        state.status, state.reason = "aborted", "aborted by `raylane rollout abort`"
        record_event(state, "abort", at=time.time())

    state = update_state(storage, args.name, abort)
    print(f"aborted: {state.summary()}; the alias was not moved")
    return 0


def _status(storage: Storage, args) -> int:
    state, _ = read_state(storage, args.name)
    if state is None:
        raise RaylaneError(f"model {args.name!r} has no rollout in {storage.uri}")
    if args.json:
        print(json.dumps(state.model_dump(), indent=2))
        return 0
    print(state.summary())
    print(f"step {state.step + 1}/{len(state.steps)} of {state.steps}, {state.step_seconds:g} s "
          f"each; bounds: error rate +{state.max_error_rate:g}, p99 x{state.max_latency_ratio:g}"
          + (f"; sticky by {state.sticky_header}" if state.sticky_header else ""))  # fmt: skip
    if state.reason:
        print(f"why: {state.reason}")
    for event in state.history:
        when = datetime.fromtimestamp(event["at"], timezone.utc).strftime("%H:%M:%S")
        stats = "  ".join(f"v{v}: {s['requests']} req, {s['errors']} 5xx, p99 {s['p99_ms']} ms"
                          for v, s in event.get("stats", {}).items())  # fmt: skip
        print(f"  {when}  {event['event']:<9} {event['weight']:>3}%  {stats}")
    return 0


def _connect(address: str | None) -> None:
    """Join the cluster that serves the model: a Ray started here would end with this command,
    and the controller with it."""
    import ray
    from ray._private.services import find_gcs_addresses

    from cluster.runtime import connect, loopback_only

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # "auto" finds a local Ray by its processes and swaps a loopback address for this
        # machine's; a Ray that raylane started (`raylane serve`) listens on loopback only.
        found = find_gcs_addresses()
        if found and all(gcs.startswith("127.") for gcs in found):
            loopback_only()
    try:
        connect(address or "auto")
    except ConnectionError as error:
        raise RaylaneError(
            f"no Ray cluster to run the rollout's controller ({error}); start the app first "
            "(`raylane serve --model NAME@ALIAS`) or pass --address"
        ) from None


if __name__ == "__main__":
    run_cli(main)

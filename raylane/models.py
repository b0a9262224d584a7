"""`raylane models`: list, show, promote and roll back registered models.

    raylane models list
    raylane models show digits@production
    raylane models promote digits:3 --alias production    # or digits@staging --alias production
    raylane models rollback digits --alias production
    raylane models register wine s3://raylane/runs/wine/checkpoint-epoch-0007 --promote staging

`--storage` may come before or after the subcommand. The registry itself (cluster/registry.py)
knows nothing of the command line; this module only parses, calls it and prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cluster.config import STORAGE_HELP
from cluster.errors import ConfigError, run_cli
from cluster.registry import REF_FORMS, ModelRef, Registry, check_name, ranges
from cluster.storage import Storage
from cluster.text import format_table, short
from workloads.checkpoint import open_registry
from workloads.registration import register_checkpoint


def build_parser() -> argparse.ArgumentParser:
    # --storage is accepted before and after the subcommand (SUPPRESS keeps the later
    # subparser default from overwriting a value given first).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", metavar="URI", default=argparse.SUPPRESS, help=STORAGE_HELP)
    parser = argparse.ArgumentParser(
        prog="raylane models",
        description="List, show, register, promote and roll back registered models.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", parents=[common], help="models with their versions and aliases")
    show = commands.add_parser(
        "show", parents=[common], help="metrics, lineage and aliases of one version"
    )
    show.add_argument("ref", metavar="REF", help=REF_FORMS)
    promote = commands.add_parser("promote", parents=[common], help="point an alias at a version")
    promote.add_argument("ref", metavar="REF", help="NAME:VERSION or NAME@OTHER_ALIAS")
    promote.add_argument("--alias", required=True, help="alias to move, e.g. production")
    rollback = commands.add_parser(
        "rollback", parents=[common], help="move an alias back to its previous version"
    )
    rollback.add_argument("name", metavar="NAME", help="model name, e.g. digits")
    rollback.add_argument("--alias", required=True, help="alias to move back")
    register = commands.add_parser(
        "register", parents=[common], help="register a checkpoint directory as a new version"
    )
    register.add_argument("name", metavar="NAME", help="model name, e.g. wine")
    register.add_argument(
        "checkpoint", metavar="CHECKPOINT_URI", help="checkpoint directory: s3://... or a path"
    )
    register.add_argument("--promote", metavar="ALIAS", help="then point ALIAS at the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = Storage.from_uri(getattr(args, "storage", None))
    storage.check()  # a wrong endpoint, credentials or bucket fails here, within seconds
    registry = open_registry(storage)
    handler = {
        "list": _list,
        "show": _show,
        "promote": _promote,
        "rollback": _rollback,
        "register": _register,
    }
    return handler[args.command](registry, args)


def _list(registry: Registry, args) -> int:
    models = registry.models()
    if not models:
        print(f"no models registered in {registry.storage.uri_for('registry')}")
        return 0
    rows = []
    for name in models:
        versions = registry.versions(name)
        aliases = ", ".join(f"{a} -> {v}" for a, v in registry.aliases(name).items())
        rows.append([name, ranges(versions), str(versions[-1]), aliases or "-"])
    print(format_table(["MODEL", "VERSIONS", "LATEST", "ALIASES"], rows))
    return 0


def _show(registry: Registry, args) -> int:
    name, version = registry.resolve(args.ref)
    info = registry.describe(name, version)
    pointing = [a for a, v in registry.aliases(name).items() if v == version]
    print(f"{name}:{version}  {info['uri']}")
    print(f"aliases: {', '.join(pointing) or '-'}")
    metrics = info["meta"].get("metrics") or {}
    print(
        "metrics (at the registered epoch; lr is the scheduled rate then):"
        if metrics
        else "metrics: -"
    )
    for key, value in sorted(metrics.items()):
        print(f"  {key:<24} {short(value)}")
    print("lineage:" + ("" if info["lineage"] else " -"))
    for key, value in sorted(info["lineage"].items()):
        print(f"  {key:<24} {short(value)}")
    return 0


def _promote(registry: Registry, args) -> int:
    ref = ModelRef.parse(args.ref)
    if ref.version is None and ref.alias is None:
        # Promoting "whatever is latest" is how the wrong model reaches production: be explicit.
        latest = registry.resolve(ref)[1]
        raise ConfigError(
            f"say which version to promote: {ref.name}:VERSION or {ref.name}@ALIAS "
            f"(the latest is {ref.name}:{latest})"
        )
    name, version = registry.resolve(ref)
    before = registry.aliases(name).get(args.alias)
    # expected=before: if someone moves the alias between our read and write, say so, since the
    # "(was N)" printed below would otherwise be wrong.
    record = registry.promote(name, args.alias, version, expected=before)
    was = f" (was {before})" if before is not None else " (new alias)"
    print(f"{name}@{args.alias} -> version {record['version']}{was}")
    return 0


def _rollback(registry: Registry, args) -> int:
    check_name(args.name)
    before = registry.resolve(ModelRef(args.name, alias=args.alias))[1]
    record = registry.rollback(args.name, args.alias)
    print(f"{args.name}@{args.alias} -> version {record['version']} (was {before})")
    return 0


def _register(registry: Registry, args) -> int:
    check_name(args.name)  # before any download
    source = Storage.from_uri(args.checkpoint)
    record = register_checkpoint(
        registry, args.name, source, "", lineage={"registered_from": source.uri}, alias=args.promote
    )
    shown = f" (now {args.name}@{args.promote})" if args.promote else ""
    print(f"registered: {args.name}:{record['version']} from {source.uri}{shown}")
    return 0


if __name__ == "__main__":
    run_cli(main)

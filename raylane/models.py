"""`raylane models`: list, show, evaluate, compare, promote and roll back registered models.

    raylane models list
    raylane models show digits@production                 # metrics, lineage, its report
    raylane models evaluate digits:3 [--data s3://bucket/new.parquet] [--inference ray]
    raylane models compare digits:3 digits:4              # same rows, is the difference real?
    raylane models promote digits:3 --alias production    # or digits@staging --alias production
    raylane models rollback digits --alias production
    raylane models register wine s3://raylane/runs/wine/checkpoint-epoch-0007 --promote staging

`--storage` may come before or after the subcommand. The registry itself (cluster/registry.py)
knows nothing of the command line, nor does the evaluation (workloads/evaluate.py); this module
only parses, calls them and prints.

`promote` refuses a version that is significantly less accurate than the one the alias points
at now (McNemar's test on the current version's validation rows); `--force` promotes anyway.
Versions that cannot be compared (no recorded validation data) are promoted with a note.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from cluster.config import STORAGE_HELP
from cluster.errors import ConfigError, DataError, NotFoundError, RaylaneError, run_cli
from cluster.registry import REF_FORMS, ModelRef, Registry, check_name, ranges
from cluster.storage import Storage
from cluster.text import format_table, short
from workloads.checkpoint import open_registry
from workloads.comparison import format_comparison
from workloads.evaluate import compare_versions, evaluate_version
from workloads.registration import register_checkpoint, report_line
from workloads.report import HEADLINE, REPORT_HTML, REPORT_JSON, format_report
from workloads.significance import significantly_worse
from workloads.tracking import add_tracking_args, tracking_from
from workloads.trust import add_allow_flag


def build_parser() -> argparse.ArgumentParser:
    # --storage is accepted before and after the subcommand (SUPPRESS keeps the later
    # subparser default from overwriting a value given first).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", metavar="URI", default=argparse.SUPPRESS, help=STORAGE_HELP)
    parser = argparse.ArgumentParser(
        prog="raylane models",
        description="List, show, register, evaluate, compare, promote and roll back registered "
        "models.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", parents=[common], help="models with their versions and aliases")
    show = commands.add_parser(
        "show", parents=[common], help="metrics, lineage and aliases of one version"
    )
    show.add_argument("ref", metavar="REF", help=REF_FORMS)
    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="write a version's evaluation report (metrics, plots)"
    )
    evaluate.add_argument("ref", metavar="REF", help=REF_FORMS)
    _add_rows_args(evaluate)
    add_tracking_args(evaluate)
    compare = commands.add_parser(
        "compare", parents=[common], help="versions side by side on the same rows, with a test"
    )
    compare.add_argument("refs", metavar="REF", nargs="+", help="two or more versions")
    _add_rows_args(compare)
    promote = commands.add_parser("promote", parents=[common], help="point an alias at a version")
    promote.add_argument("ref", metavar="REF", help="NAME:VERSION or NAME@OTHER_ALIAS")
    promote.add_argument("--alias", required=True, help="alias to move, e.g. production")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even when the version is significantly worse than the alias's current one",
    )
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
    add_tracking_args(register)
    return parser


def _add_rows_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="URI",
        help="Parquet file or directory with the model's columns: evaluate on every row of it "
        "(default: the validation split the version was trained with)",
    )
    parser.add_argument(
        "--inference",
        choices=["auto", "local", "ray"],
        default="auto",
        help="where the forward passes run: in this process, or Ray Data batches on the cluster "
        "(auto: Ray above 200,000 rows)",
    )
    parser.add_argument(
        "--address", help="Ray cluster address for --inference ray (default: $RAY_ADDRESS)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    add_allow_flag(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = Storage.from_uri(getattr(args, "storage", None))
    storage.check()  # a wrong endpoint, credentials or bucket fails here, within seconds
    registry = open_registry(storage)
    handler = {
        "list": _list, "show": _show, "evaluate": _evaluate, "compare": _compare,
        "promote": _promote, "rollback": _rollback, "register": _register,
    }  # fmt: skip
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
    _show_reports(registry, name, version)
    meta = info["meta"]
    # `lr` among the metrics is the schedule's rate at that epoch, not the configured one.
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if k != "lr"}
    print(f"metrics (at epoch {meta.get('epoch', '?')}):" if metrics else "metrics: -")
    for key, value in sorted(metrics.items()):
        print(f"  {key:<24} {short(value)}")
    if rates := learning_rates(meta):
        print(rates)
    print("lineage:" + ("" if info["lineage"] else " -"))
    for key, value in sorted(info["lineage"].items()):
        print(f"  {key:<24} {short(value)}")
    return 0


def learning_rates(meta: dict) -> str | None:
    """Which learning rate was configured (train.lr, the schedule's peak) and which one the
    schedule had reached at the registered epoch; None when the meta records neither."""
    train = (meta.get("config") or {}).get("train") or {}
    scheduled = (meta.get("metrics") or {}).get("lr")
    if "lr" not in train and scheduled is None:
        return None
    parts = []
    if "lr" in train:
        schedule = train.get("scheduler", "?")
        parts.append(
            f"configured {short(train['lr'])} (train.lr, the peak of a {schedule} schedule)"
        )
    if scheduled is not None:
        parts.append(f"scheduled {short(scheduled)} at epoch {meta.get('epoch', '?')}")
    return "learning rate: " + "; ".join(parts)


def _show_reports(registry: Registry, name: str, version: int) -> None:
    """Where the version's evaluation reports are, with the headline of each."""
    labels = registry.reports(name, version)
    if not labels:
        print(f"evaluation: - (write one with `raylane models evaluate {name}:{version}`)")
        return
    for label in sorted(labels, key=lambda label: label != "validation"):
        key = registry.report_key(name, version, label)
        try:
            report = registry.storage.read_json(f"{key}/{REPORT_JSON}")
        except NotFoundError:
            continue  # being written, or its writer died: not a report yet
        print(f"evaluation: {registry.storage.uri_for(key)}/{REPORT_HTML}")
        print(f"  on {report['data']['description']}, {report['rows']} rows")
        metrics = report["metrics"]
        print("  " + "  ".join(f"{k} {_number(metrics[k])}" for k in HEADLINE))


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _evaluate(registry: Registry, args) -> int:
    name, version = registry.resolve(args.ref)
    result = evaluate_version(
        registry, name, version, data=args.data, inference=args.inference,
        address=args.address, tracking=tracking_from(args), allow_modules=args.allow_custom_module,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"uri": result["uri"], "report": result["report"]}))
    else:
        print(format_report(result["report"], uri=result["uri"]))
    return 0


def _compare(registry: Registry, args) -> int:
    if len(args.refs) < 2:
        raise ConfigError("compare needs two or more versions, e.g. digits:3 digits:4")
    refs = [registry.resolve(ref) for ref in args.refs]
    comparison = compare_versions(
        registry, refs, data=args.data, inference=args.inference, address=args.address,
        allow_modules=args.allow_custom_module,
    )  # fmt: skip
    print(json.dumps(comparison) if args.json else format_comparison(comparison))
    return 0


def _check_not_worse(registry: Registry, name: str, alias: str, current, candidate) -> None:
    """Refuse a candidate significantly less accurate than the alias's version (see --force)."""
    if current is None or current == candidate:
        return
    try:
        comparison = compare_versions(registry, [(name, current), (name, candidate)], costs=False)
    except DataError as error:
        # Nothing to compare on (no recorded validation data, a model that cannot be loaded
        # here): say so, and leave the decision to the person promoting.
        print(f"not checked against {name}@{alias} ({name}:{current}): {error}")
        return
    pair = comparison["comparisons"][0]
    if significantly_worse(pair):
        raise RaylaneError(
            f"not promoting: {pair['statement']}, on {comparison['rows']} rows of "
            f"{name}:{current}'s validation split; promote it anyway with --force"
        )
    print(f"checked against {name}@{alias} on {comparison['rows']} rows: {pair['statement']}")


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
    if not args.force:
        _check_not_worse(registry, name, args.alias, before, version)
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
        registry, args.name, source, "", lineage={"registered_from": source.uri},
        alias=args.promote, tracking=tracking_from(args),
    )  # fmt: skip
    shown = f" (now {args.name}@{args.promote})" if args.promote else ""
    print(f"registered: {args.name}:{record['version']} from {source.uri}{shown}")
    print(report_line(record))
    return 0


if __name__ == "__main__":
    run_cli(main)

"""`raylane data`: write an embedded dataset to storage as Parquet.

    raylane data prepare digits --storage s3://raylane
    raylane data prepare synthetic-tabular --rows 500000
    # then: raylane train --config tabular-mlp --set data.dataset=synthetic-tabular --set data.rows=500000
    raylane data list                                        # the embedded datasets

Datasets land in `<storage>/datasets/<name>/` (synthetic ones in `<name>-<rows>/`) as Parquet
parts plus `dataset.json`, written last. Training prepares an embedded dataset on first use,
so this command is only needed to look at the data first or to prepare it ahead of a run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from cluster.config import STORAGE_HELP
from cluster.errors import run_cli
from cluster.storage import Storage
from cluster.text import format_table
from workloads.data import prepare
from workloads.datasets import DATASETS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="raylane data", description="Write an embedded dataset to storage as Parquet."
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prep = sub.add_parser("prepare", help="generate a dataset and write it to storage")
    prep.add_argument("name", choices=list(DATASETS), help="which embedded dataset")
    prep.add_argument(
        "--rows", type=int, default=20_000, help="rows of synthetic-* datasets (20000); "
        "train on them with --set data.dataset=NAME --set data.rows=N"
    )  # fmt: skip
    prep.add_argument("--seed", type=int, default=0, help="generator seed (0)")
    prep.add_argument("--storage", metavar="URI", help=STORAGE_HELP)
    sub.add_parser("list", help="the embedded datasets")
    args = parser.parse_args(argv)

    if args.action == "list":
        rows = [[d.name, d.kind, str(len(d.class_names)), d.description] for d in DATASETS.values()]
        print(format_table(["NAME", "KIND", "CLASSES", "DESCRIPTION"], rows))
        return 0
    storage = Storage.from_uri(args.storage)
    storage.check()
    info = prepare(storage, args.name, rows=args.rows, seed=args.seed)
    summary = {
        "uri": info.uri,
        "rows": info.rows,
        "shape": info.feature_shape,
        "classes": info.num_classes,
        "fingerprint": info.fingerprint,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)

"""`raylane optimize`: make a registered model smaller or faster; the result is a new version.

    raylane optimize quantize --model digits@production --register digits
    raylane optimize prune --model digits@production --sparsity 0.5 --register digits
    raylane optimize distill --teacher digits@production --config digits-mlp --register digits
    ray job submit --working-dir . -- python -m workloads.optimize quantize --model digits:3

Each method lives in a module of its own; this one only dispatches, so that a method added
later is one line in METHODS. Every result is registered with lineage
`{parent: "NAME:VERSION", method, settings}` and is promoted and served like any version.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from cluster.errors import run_cli

# method -> (module with main(argv), one-line help). Modules are imported only when chosen.
METHODS: dict[str, tuple[str, str]] = {
    "quantize": ("workloads.quantize", "post-training int8 (ONNX Runtime), dynamic or static"),
    "prune": ("workloads.prune", "magnitude pruning (--structured: smaller MLP), recovery epochs"),
    "distill": ("workloads.distill", "train a smaller student on a teacher's soft targets"),
}


def usage() -> str:
    lines = ["usage: raylane optimize METHOD [--help] ...", "", "methods:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in METHODS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in METHODS:
        print(f"error: unknown method {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(METHODS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    run_cli(main)

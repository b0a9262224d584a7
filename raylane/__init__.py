"""raylane's orchestration layer: the `raylane` command and the flows that combine packages.

Layers, bottom up (enforced by the import-linter contracts in pyproject.toml):
`cluster` (storage, registry, Ray connection) <- `workloads` (models, data, training) <-
`tune`, `serve` <- `raylane`. Only this package may import all the others.
"""

import os

# Ray merges console lines that differ only in numbers ("[repeated 4x across cluster]"), which
# hid the epoch lines of all trials but one until the end. Ray reads this once, when it is
# imported, so it is set here, before any subcommand imports Ray.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

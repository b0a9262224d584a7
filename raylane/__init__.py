"""raylane's orchestration layer: the `raylane` command and the flows that combine packages.

Layers, bottom up (enforced by the import-linter contracts in pyproject.toml):
`cluster` (storage, registry, Ray connection) <- `workloads` (models, data, training) <-
`tune`, `serve` <- `raylane`. Only this package may import all the others.
"""

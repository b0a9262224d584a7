"""Which model code a process may import: the operator decides, never a registry entry.

    policy = CodePolicy.for_loading(storage_root=registry.storage.local_root,
                                    extra=["my_pkg.nets"])        # --allow-custom-module
    model = build_model(meta["model"], policy=policy)              # refuses before any import

A stored checkpoint names its model class in its meta. Built-in families (mlp, cnn, transformer)
need no import at all. A custom class (`pkg.module:Class`) is code: whoever can write to the
registry could otherwise name any importable module, or plant one under the storage root, and
have its top-level code run on every Serve replica and in every `raylane predict`. So loading a
custom class needs the operator's say-so:

- `$RAYLANE_CUSTOM_MODEL_MODULES` (comma-separated module prefixes), `--allow-custom-module` on
  `raylane predict` / `raylane serve` / `python -m workloads.evaluate`, or the serve arg
  `custom_model_modules`; off by default;
- never a module whose file lies under a local storage root, whatever the allow-list says;
- the check runs on the name and on the file system before anything is imported.

Training is different: the class comes from the job's own config, which the operator wrote, so
the training driver and workers build with `CodePolicy.CONFIGURED`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import ConfigError

ENV_CUSTOM_MODULES = "RAYLANE_CUSTOM_MODEL_MODULES"
MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
HOW_TO_ALLOW = (
    f"${ENV_CUSTOM_MODULES}=MODULE (comma-separated), --allow-custom-module MODULE, "
    "or the serve arg custom_model_modules"
)


@dataclass(frozen=True)
class CodePolicy:
    """Module prefixes whose code may be imported to rebuild a model, and roots it may not
    come from. `configured=True`: the class was named by the running job's own config."""

    allowed: tuple[str, ...] = ()
    forbidden_roots: tuple[Path, ...] = ()
    configured: bool = False

    @classmethod
    def for_loading(
        cls, *, storage_root: Path | None = None, extra: Iterable[str] = ()
    ) -> CodePolicy:
        """The operator's allow-list ($RAYLANE_CUSTOM_MODEL_MODULES plus `extra`)."""
        listed = [m.strip() for m in os.environ.get(ENV_CUSTOM_MODULES, "").split(",")]
        allowed = tuple(dict.fromkeys(m for m in [*listed, *extra] if m))
        bad = [m for m in allowed if not MODULE_RE.fullmatch(m)]
        if bad:
            raise ConfigError(
                f"custom model module prefix {bad[0]!r} is not a module name "
                f"(e.g. my_pkg.nets); set by {HOW_TO_ALLOW}"
            )
        roots = (storage_root.resolve(),) if storage_root is not None else ()
        return cls(allowed=allowed, forbidden_roots=roots)

    def check(self, path: str) -> None:
        """Raise ConfigError unless the module of 'pkg.module:Class' may be imported."""
        module, _, _ = str(path).partition(":")
        if self.configured:
            return
        if not any(module == p or module.startswith(f"{p}.") for p in self.allowed):
            raise ConfigError(
                f"the model names custom class {path!r}, and loading custom model code is off: "
                f"a registry entry does not choose what code runs here. If you trust module "
                f"{module!r}, allow it with {HOW_TO_ALLOW}"
            )
        location = locate(module)
        for root in self.forbidden_roots:
            if location is not None and location.is_relative_to(root):
                raise ConfigError(
                    f"custom model module {module!r} would be imported from {location}, inside "
                    f"the storage root {root}: model code is never loaded from storage; install "
                    "its package instead"
                )


CodePolicy.CONFIGURED = CodePolicy(configured=True)


def locate(module: str) -> Path | None:
    """Where `module`'s top-level package or file would be imported from, found without
    importing anything (the first match on sys.path, as the import system would take it)."""
    top = module.split(".")[0]
    for entry in sys.path:
        base = Path(entry or ".").resolve()
        for candidate in (base / top / "__init__.py", base / f"{top}.py", base / top):
            if candidate.exists():
                return candidate.parent if candidate.name == "__init__.py" else candidate
    return None


def add_allow_flag(parser, *, dest: str = "allow_custom_module") -> None:
    """`--allow-custom-module MODULE` (repeatable), the same on every command that loads a
    stored model: predict, evaluate, `models evaluate/compare`, serve."""
    parser.add_argument(
        "--allow-custom-module",
        dest=dest,
        action="append",
        default=[],
        metavar="MODULE",
        help="let a custom model class from MODULE (and its submodules) load; repeatable. Off "
        "by default: a registry entry never chooses what code runs here",
    )

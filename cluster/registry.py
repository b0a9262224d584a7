"""Model registry on a Storage: immutable numbered versions, aliases moved by compare-and-swap.

    raylane models list                                   # models, versions, aliases
    raylane models show digits@production                 # metrics, lineage, aliases of a version
    raylane models promote digits:3 --alias production    # or digits@staging --alias production
    raylane models rollback digits --alias production     # back to the previous version

    registry = workloads.checkpoint.open_registry(storage)    # a Registry with the checkpoint
    version = registry.register("digits", "ckpt/", lineage={"sweep": "s1", "trial": "t3"})
    registry.promote("digits", "production", version, expected=None)
    name, version = registry.resolve("digits@production")

Layout below `<storage>/registry/<name>/`:

    versions/<n>/lineage.json       written first, with put-if-absent: it claims number n
    versions/<n>/...                the checkpoint's files (the `layout`'s required files)
    versions/<n>/<marker>           written last: a version exists for readers once this does
    aliases/<alias>.json            {"version", "previous", "updated_at", "updated_by"}
    reports/<n>/<label>/...         evaluation reports of version n (workloads/report.py)

The registry knows no checkpoint file by name: a `VersionLayout` (workloads/checkpoint.py
makes the one raylane uses) says which files a version needs and which one is written last.

A registration that dies half-way leaves a claimed number without its marker: readers skip it and
its number is never handed out again, so `digits:4` can never mean two different models.
Aliases move only by compare-and-swap, so of two concurrent promoters exactly one wins and the
other gets a ConflictError; a reader sees the old record or the new one, never a torn one.

Reports live beside the versions, not inside them: a version directory never changes once its
marker is written, while a report can be computed later (`raylane models evaluate digits:3
--data ...`) or again. A report is derived from the version and the rows it names, so
rewriting one changes no model; `validation` is the one written at registration.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cluster.errors import ConfigError, ConflictError, NotFoundError, RaylaneError
from cluster.storage import Storage, dump_json

LINEAGE = "lineage.json"
MAX_HISTORY = 20  # rollback depth kept in an alias record; older entries are dropped

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
ALIAS_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
REF_RE = re.compile(r"(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>[0-9]+))?")
REF_FORMS = "NAME, NAME@ALIAS or NAME:VERSION (e.g. digits, digits@production, digits:3)"


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()  # promote(expected=ANY): compare-and-swap against whatever was read just before


@dataclass(frozen=True)
class ModelRef:
    """`name` (latest version), `name@alias` or `name:version`."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self):
        check_name(self.name)
        if self.version is not None and self.alias is not None:
            raise ConfigError(f"a model reference has a version or an alias, not both: {REF_FORMS}")
        if self.alias is not None:
            _check_alias(self.alias)
        if self.version is not None and self.version < 1:
            raise ConfigError(f"model versions start at 1, got {self.version}")

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        match = REF_RE.fullmatch(ref.strip()) if isinstance(ref, str) else None
        alias_ok = match and (match["alias"] is None or ALIAS_RE.fullmatch(match["alias"]))
        if not alias_ok or not NAME_RE.fullmatch(match["name"]):
            raise ConfigError(
                f"malformed model reference {ref!r}: use {REF_FORMS}; names and aliases are "
                "lowercase letters, digits, '-' and '_'"
            )
        version = int(match["version"]) if match["version"] else None
        return cls(match["name"], version=version, alias=match["alias"])

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}:{self.version}"


@dataclass(frozen=True)
class VersionLayout:
    """The files of a version: `required` must all be in a directory to register it; `marker`
    (one of them) is uploaded last, and a version is visible once its marker exists."""

    required: tuple[str, ...]
    marker: str


class Registry:
    """Registered models in `<storage>/registry/`. Every method goes to storage, no caching,
    so several processes (sweeps, Serve replicas, a person at the CLI) can share one registry."""

    def __init__(self, storage: Storage, *, layout: VersionLayout):
        self.storage = storage
        self.layout = layout

    # ------------------------------------------------------------------ versions

    def register(self, name: str, checkpoint_dir: str | Path, *, lineage: dict) -> int:
        """Copy a local checkpoint directory into a new version; return its number."""
        check_name(name)
        if not isinstance(lineage, dict):
            raise ConfigError(
                f"lineage must be a dict (sweep, trial, config, ...), got {lineage!r}"
            )
        checkpoint_dir = self._check_directory(Path(checkpoint_dir))
        version = self._claim(name, dump_json(lineage))
        with _without_lineage(checkpoint_dir) as source:
            # The marker last: until it lands, readers treat the version as not there.
            marker = (self.layout.marker,)
            self.storage.upload_dir(source, self.version_key(name, version), last=marker)
        return version

    def register_from(self, name: str, source: Storage, key: str, *, lineage: dict) -> int:
        """Register a checkpoint directory stored at `key` in `source` (e.g. a Tune trial's)."""
        with tempfile.TemporaryDirectory(prefix="raylane-register-") as tmp:
            local = source.download_dir(key, Path(tmp) / "checkpoint")
            return self.register(name, local, lineage=lineage)

    def models(self) -> list[str]:
        """Names with at least one visible version, sorted."""
        names = [n for n in self.storage.list_dirs("registry") if NAME_RE.fullmatch(n)]
        return [n for n in names if self._scan(n)[0]]

    def versions(self, name: str) -> list[int]:
        """Visible versions of `name`, ascending; NotFoundError for an unknown model."""
        check_name(name)
        visible, _ = self._scan(name)
        if not visible:
            raise self._missing_model(name)
        return visible

    def describe(self, name: str, version: int) -> dict:
        key = self.version_key(name, version)
        try:
            meta = self.storage.read_json(f"{key}/{self.layout.marker}")
        except NotFoundError:
            raise self._missing_version(name, version) from None
        lineage = self.storage.read_json(f"{key}/{LINEAGE}")
        uri = self.storage.uri_for(key)
        return {"name": name, "version": version, "meta": meta, "lineage": lineage, "uri": uri}

    def resolve(self, ref: str | ModelRef) -> tuple[str, int]:
        """`name` -> latest visible version; `name:n` -> n if visible; `name@alias` -> its target."""
        ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        if ref.alias is not None:
            record, _ = self._read_alias(ref.name, ref.alias)
            if record is None:
                raise self._missing_alias(ref.name, ref.alias)
            return ref.name, record["version"]
        versions = self.versions(ref.name)
        if ref.version is None:
            return ref.name, versions[-1]
        if ref.version not in versions:
            raise self._missing_version(ref.name, ref.version, versions)
        return ref.name, ref.version

    def version_key(self, name: str, version: int) -> str:
        check_name(name)
        return f"registry/{name}/versions/{int(version)}"

    def report_key(self, name: str, version: int, label: str) -> str:
        """Where report `label` of a version lives (outside the immutable version directory)."""
        check_name(name)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", label):
            raise ConfigError(f"invalid report label {label!r}: lowercase letters, digits, - and _")
        return f"registry/{name}/reports/{int(version)}/{label}"

    def reports(self, name: str, version: int) -> list[str]:
        """Labels of the reports stored for a version (complete or not: the caller checks)."""
        check_name(name)
        return self.storage.list_dirs(f"registry/{name}/reports/{int(version)}")

    def download(self, name: str, version: int, local_dir: str | Path) -> Path:
        """Copy version `version` of `name` into `local_dir` (created if needed; pass a fresh
        one, files already there are left in place)."""
        if not self.storage.exists(f"{self.version_key(name, version)}/{self.layout.marker}"):
            raise self._missing_version(name, version)
        return self.storage.download_dir(self.version_key(name, version), local_dir)

    # ------------------------------------------------------------------ aliases

    def aliases(self, name: str) -> dict[str, int]:
        """{alias: version} for `name`, sorted by alias."""
        self.versions(name)  # NotFoundError naming the registered models
        found = {}
        for key in self.storage.list(f"registry/{name}/aliases"):
            alias = key.rsplit("/", 1)[-1].removesuffix(".json")
            if not ALIAS_RE.fullmatch(alias):
                continue  # not written by this registry
            record, _ = self._read_alias(name, alias)
            if record is not None:  # None: deleted between the listing and the read
                found[alias] = record["version"]
        return dict(sorted(found.items()))

    def promote(
        self, name: str, alias: str, version: int, *, expected: int | None | object = ANY
    ) -> dict:
        """Point `alias` at `version`, if the alias is still where `expected` says.

        expected=ANY: at whatever it pointed to when read here (only a racing writer conflicts);
        expected=None: the alias must not exist yet; expected=k: it must point at version k.
        """
        _check_alias(alias)
        if version not in self.versions(name):
            raise self._missing_version(name, version)
        current, token = self._read_alias(name, alias)
        current_version = current["version"] if current else None
        if expected is not ANY and expected != current_version:
            raise _conflict(name, alias, now=current_version, expected=expected)
        record = _alias_record(version, current)
        return self._swap(name, alias, record, token, expected=current_version)

    def rollback(self, name: str, alias: str) -> dict:
        """Point `alias` back at the version it had before its last promotion."""
        _check_alias(alias)
        current, token = self._read_alias(name, alias)
        if current is None:
            raise self._missing_alias(name, alias)
        previous = list(current.get("previous", []))
        if not previous:
            raise RaylaneError(
                f"alias {alias!r} of {name!r} has no earlier version to roll back to (it points "
                f"at {current['version']}); promote one instead: "
                f"raylane models promote {name}:VERSION --alias {alias}"
            )
        record = {"version": previous[-1], "previous": previous[:-1], **_stamp()}
        return self._swap(name, alias, record, token, expected=current["version"])

    # ------------------------------------------------------------------ internals

    def _scan(self, name: str) -> tuple[list[int], int]:
        """(visible versions ascending, highest claimed number or 0), from one listing."""
        prefix = f"registry/{name}/versions/"
        visible, highest = set(), 0
        for key in self.storage.list(prefix):
            number, _, rest = key[len(prefix) :].partition("/")
            if not (number.isascii() and number.isdigit()):
                continue
            highest = max(highest, int(number))
            if rest == self.layout.marker:
                visible.add(int(number))
        return sorted(visible), highest

    def _claim(self, name: str, lineage: bytes) -> int:
        """Allocate the next version number by creating its lineage.json with put-if-absent."""
        version = self._scan(name)[1] + 1
        while not self.storage.put_if_absent(
            f"{self.version_key(name, version)}/{LINEAGE}", lineage
        ):
            version += 1  # a concurrent registration took this number; try the next
        return version

    def _check_directory(self, path: Path) -> Path:
        missing = [f for f in self.layout.required if not (path / f).is_file()]
        if missing:
            raise ConfigError(
                f"{path} is not a checkpoint directory: it lacks {' and '.join(missing)} "
                f"(a checkpoint holds {', '.join(self.layout.required)})"
            )
        return path

    def _alias_key(self, name: str, alias: str) -> str:
        return f"registry/{name}/aliases/{alias}.json"

    def _read_alias(self, name: str, alias: str) -> tuple[dict | None, str | None]:
        """(record, CAS token), or (None, None) when the alias does not exist."""
        try:
            data, token = self.storage.read_versioned(self._alias_key(name, alias))
        except NotFoundError:
            return None, None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("version"), int):
            raise RaylaneError(
                f"{self.storage.uri_for(self._alias_key(name, alias))} is not an alias record; "
                f"re-create it with `raylane models promote {name}:VERSION --alias {alias}`"
            )
        return record, token

    def _swap(self, name: str, alias: str, record: dict, token, *, expected) -> dict:
        if not self.storage.compare_and_swap(
            self._alias_key(name, alias), dump_json(record), token
        ):
            now, _ = self._read_alias(name, alias)
            raise _conflict(name, alias, now=now["version"] if now else None, expected=expected)
        return record

    def _missing_model(self, name: str) -> NotFoundError:
        models = self.models()
        known = f"registered models: {', '.join(models)}" if models else "none is registered yet"
        return NotFoundError(
            f"no model {name!r} in {self.storage.uri_for('registry')} ({known}); check the name "
            "and --storage / $RAYLANE_STORAGE, or register it with `raylane sweep --register NAME`"
        )

    def _missing_version(self, name: str, version: int, versions=None) -> NotFoundError:
        versions = versions or self.versions(name)
        return NotFoundError(
            f"model {name!r} has no version {version}; versions: {ranges(versions)} "
            f"(latest {versions[-1]})"
        )

    def _missing_alias(self, name: str, alias: str) -> NotFoundError:
        aliases = self.aliases(name)
        known = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "none yet"
        return NotFoundError(
            f"model {name!r} has no alias {alias!r}; aliases: {known}. Create it with "
            f"`raylane models promote {name}:VERSION --alias {alias}`"
        )


def _conflict(name: str, alias: str, *, now: int | None, expected) -> ConflictError:
    """The error for a lost compare-and-swap or a wrong `expected`: what the alias is now."""
    if now is None:
        state = f"does not exist (expected it at version {expected})"
    elif expected is None:
        state = f"already exists (version {now}), expected it not to"
    elif now == expected:
        state = f"was rewritten meanwhile (it points at version {now})"
    else:
        state = f"moved to version {now} meanwhile (expected {expected})"
    return ConflictError(f"alias {alias!r} of {name!r} {state}; re-read it and try again")


def _alias_record(version: int, current: dict | None) -> dict:
    previous = list(current.get("previous", [])) if current else []
    if current and current["version"] != version:
        previous.append(current["version"])
    return {"version": version, "previous": previous[-MAX_HISTORY:], **_stamp()}


def _stamp() -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # containers often run as a uid without a passwd entry
        user = "unknown"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"updated_at": now, "updated_by": f"{user}@{socket.gethostname()}"}


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (e.g. digits-cnn)"
        )


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise ConfigError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' and '-' "
            "(e.g. production, staging)"
        )


@contextlib.contextmanager
def _without_lineage(path: Path):
    """The checkpoint dir itself, or a copy without lineage.json (when re-registering a registry
    version), so that uploading it cannot overwrite the lineage.json that claimed the number."""
    if not (path / LINEAGE).exists():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="raylane-register-") as tmp:
        copy = Path(tmp) / "checkpoint"
        shutil.copytree(path, copy, ignore=lambda d, _: [LINEAGE] if Path(d) == path else [])
        yield copy


def ranges(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)

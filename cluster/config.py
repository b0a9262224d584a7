"""The config toolkit every job uses: a strict pydantic base, YAML presets, dotted overrides,
readable validation errors, the metric type, and the command-line arguments all jobs share.

    class TrainConfig(Strict): ...                    # unknown keys and bad values refused
    data = apply_overrides(read_yaml("digits-cnn", PRESETS), ["train.lr=0.01"])
    config = validate(JobConfig, data, source="config 'digits-cnn'")   # or ConfigError
    add_common_args(parser)                           # --storage, --set, --address

Each job keeps its typed config in its own package (workloads/config.py, tune/config.py,
serve/config.py); what they share lives here, once. A validation error is one line per field:
the dotted field name, what is wrong, and what was given or what is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cluster.errors import ConfigError

Metric = Literal["val_accuracy", "val_f1_macro", "val_auc_roc", "val_loss"]
STORAGE_HELP = "s3://bucket/prefix or a directory (default: $RAYLANE_STORAGE or ./artifacts)"


def mode_of(metric: str) -> Literal["min", "max"]:
    """Whether a larger or a smaller value of `metric` is better."""
    return "min" if metric.endswith("loss") else "max"


class Strict(BaseModel):
    """A config section: unknown fields are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


Config = TypeVar("Config", bound=BaseModel)


def presets(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def read_yaml(preset_or_path: str, directory: Path) -> dict[str, Any]:
    """A preset name from `directory`, or a YAML file path."""
    path = Path(preset_or_path)
    if not path.suffix:
        path = directory / f"{preset_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config {preset_or_path!r} not found: pass a preset "
            f"({', '.join(presets(directory))}) or a path to a YAML file"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (value parsed as YAML) to a nested dict, in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key.sub=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[leaf] = raw
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b" (the sections must exist)."""
    *parents, leaf = key.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value


def validate(model: type[Config], data: Any, source: str = "config") -> Config:
    """Build `model` from `data`, turning pydantic errors into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid {source}: " + describe_errors(model, error)) from None


def describe_errors(model: type[BaseModel], error: ValidationError) -> str:
    """'field: what is wrong (got X)' for each problem, joined by '; '."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(model, item["loc"][:-1]))
            problems.append(f"{field}: unknown field; allowed here: {allowed}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message} (got {_clip(repr(item.get('input')))})")
    return "; ".join(problems)


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    overrides: str | None = "override a config field, e.g. --set train.lr=0.01 (repeatable)",
    address: bool = True,
) -> None:
    """--storage, --set (when `overrides` is its help) and --address, the same in every job."""
    parser.add_argument("--storage", metavar="URI", help=STORAGE_HELP)
    if overrides:
        parser.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help=overrides
        )
    if address:
        parser.add_argument(
            "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
        )
        parser.add_argument(
            "--working-dir",
            metavar="DIR",
            help="your project directory (custom model code): importable here and shipped to "
            "every worker and replica (Ray runtime_env working_dir); default: the current "
            "directory, importable here and by a local Ray only",
        )
        parser.add_argument(
            "--py-modules",
            action="append",
            default=[],
            metavar="DIR",
            help="a package directory to ship to every worker and replica (runtime_env "
            "py_modules); repeatable",
        )

"""The `raylane` command as a user runs it: help, version, one-line errors, data preparation."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from raylane.cli import COMMANDS

RAYLANE = str(Path(sys.executable).parent / "raylane")


def raylane(*args: str, env: dict | None = None, timeout: int = 120):
    return subprocess.run(
        [RAYLANE, *args], capture_output=True, text=True, timeout=timeout, env=env or os.environ
    )


def test_version_is_the_installed_one():
    result = raylane("--version")
    assert result.returncode == 0 and result.stdout.startswith("raylane 0.")


def test_help_lists_every_command():
    result = raylane("--help")
    assert result.returncode == 0
    for command in ("storage", "data", "train", "sweep", "models", "serve", "predict", "pipeline"):
        assert command in result.stdout
    assert "--set KEY=VALUE" in raylane("train", "--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "nope"], "config 'nope' not found"),
        (["train", "--set", "train.epochs=-1", "--print-config"], "train.epochs: Input should be"),
        (["sweep", "--promote", "production"], "--promote needs --register NAME"),
        (["models", "--storage", "gs://x", "list"], "unsupported storage URI 'gs://x'"),
        (["models", "list", "--storage", "gs://x"], "unsupported storage URI 'gs://x'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["storage", "env", "--dir", "/nonexistent/raylane-s3"], "no S3 server is running from"),
    ],
)
def test_user_errors_are_one_line_without_a_traceback(args, message):
    result = raylane(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_data_prepare_writes_parquet_and_a_manifest(tmp_path):
    result = raylane("data", "prepare", "digits", "--storage", str(tmp_path / "art"))
    assert result.returncode == 0, result.stderr
    assert '"rows": 1797' in result.stdout
    files = sorted(p.name for p in (tmp_path / "art" / "datasets" / "digits").iterdir())
    assert files == ["dataset.json", "part-00000.parquet"]


# The entry points a user runs: every `raylane` subcommand and the documented `python -m` ones.
ENTRY_POINTS = [module for module, _ in COMMANDS.values()] + ["workloads.evaluate", "raylane.demo"]


class Parsed(Exception):
    """Raised in place of parsing, carrying the parser a main() built."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parsers_of(module_name: str) -> dict[str, argparse.ArgumentParser]:
    """{program: parser} of a module's main(), and of each method a dispatcher (METHODS) runs."""
    module = importlib.import_module(module_name)

    def parse_known_args(parser, args=None, namespace=None):
        raise Parsed(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args):
        try:
            module.main([])
        except Parsed as parsed:
            return {parsed.parser.prog: parsed.parser}
    found = {}
    for method_module, _ in getattr(module, "METHODS", {}).values():
        found.update(parsers_of(method_module))
    return found


def without_help(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments and subcommands of `parser` (and its subparsers) that have no help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                missing += [] if helps.get(name) else [f"{parser.prog} {name}"]
                missing += without_help(sub)
        elif not (action.help or "").strip():
            missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_every_argument_of_every_subcommand_has_help_text(module_name):
    parsers = parsers_of(module_name)
    assert parsers or getattr(importlib.import_module(module_name), "METHODS", None) == {}
    missing = [name for parser in parsers.values() for name in without_help(parser)]
    assert not missing, f"arguments without help text: {missing}"

"""Every command the docs show is run by a test or by `make demo`, so the docs cannot drift.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_docs.py -q

Commands are taken from every line of the ```bash blocks (continuation lines joined, `eval
"$(...)"` unwrapped) and from inline code in table rows of README.md and cluster/configs/README.md.
A command counts as run when one test file names its subcommand (the quoted word, or its module)
and quotes each of its flags; a command that needs what no test here has (a cloud account, a
Kubernetes cluster) or that only `make demo` runs is listed below with the reason, and a program
that is in neither list fails the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from raylane.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "cluster/configs/README.md"]
PROGRAMS = ("raylane", "python", "ray", "serve", "make", "curl", "mlflow")
# Program (+ subcommand) -> why no test runs it here.
NOT_RUN_BY_TESTS = {
    "aws": "needs an AWS account",
    "kubectl": "needs a Kubernetes cluster with KubeRay (manifests checked in test_kuberay_crds)",
    "git archive": "uploads the code zip for KubeRay to a bucket of your AWS account",
    "prometheus": "not installed here; prometheus.yml is checked in test_cluster_configs",
    "export": "sets variables; the commands that read them are run",
    "make demo": "the demo itself (raylane.demo; its pipeline is run by tests)",
    "make test": "runs the tests",
    "ray up": "needs an AWS account (the config is checked offline in test_cluster_configs)",
    "ray down": "needs an AWS account",
    "ray dashboard": "needs an AWS account",
    "curl": "the HTTP API it calls is exercised with httpx in test_serve",
    "serve deploy": "needs a running cluster's dashboard; serve/config.yaml is validated offline",
    "serve run": "serve/config.yaml is validated against Ray's schema in test_serve",
}
FLAGS_NOT_RUN_BY_TESTS = {
    "--use-gpu": "needs a GPU: tests/integration/test_gpu.py, where CUDA is",
    "--keep-serving": "waits for Ctrl-C; the pipeline's serving and stopping are run by test_jobs",
}


def commands_in(text: str) -> list[str]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [line.split("#")[0].strip() for line in joined.splitlines()]
    for row in (line for line in text.splitlines() if line.startswith("|")):
        found += table_commands(re.findall(r"`([^`]+)`", row))
    return [unwrap_eval(c) for c in found if c]


def unwrap_eval(command: str) -> str:
    """`eval "$(raylane storage env)"` runs the command inside."""
    return re.sub(r'^eval "\$\((.*)\)"$', r"\1", command)


def table_commands(spans: list[str]) -> list[str]:
    """`raylane models list`, `show digits@production`: the second is `raylane models show`."""
    commands, prefix = [], None
    for span in map(unwrap_eval, spans):
        if span.split()[0] in PROGRAMS:
            commands.append(span)
            words = span.split()
            prefix = " ".join(words[:2]) if words[1:2] in (["models"], ["storage"]) else None
        elif prefix and re.fullmatch(r"[a-z]+", span.split()[0]):
            commands.append(f"{prefix} {span}")
    return commands


def signature(command: str) -> tuple[str, list[str]]:
    """('raylane models register', ['--promote']): the command words and its flags."""
    command = re.sub(r"\[|\]", " ", command)
    words = shlex.split(command.replace("$(", "(").replace("=", " ", 0), posix=True)
    head = [w for w in words[:3] if re.fullmatch(r"[a-z][\w.-]*", w)]
    if head[:2] == ["python", "-m"] or words[:2] == ["python", "-m"]:
        head = ["python", "-m", words[2]]
    flags = sorted({w.split("=")[0] for w in words if w.startswith("--")})
    return " ".join(head), flags


def evidence(head: str) -> list[str]:
    """Strings whose presence in a test file shows it runs `head`."""
    words = head.split()
    if words[0] == "python":
        module = words[2]
        # `python -m tune.sweep` and `raylane sweep` run the same main().
        same = [f'"{name}"' for name, (target, _) in COMMANDS.items() if target == module]
        return [
            module,
            f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[-1]}",
        ] + same
    if words[0] == "raylane" and len(words) > 1 and words[1] in COMMANDS:
        module = COMMANDS[words[1]][0]
        package, name = module.rsplit(".", 1)
        return [f'"{words[1]}"', module, f"from {package} import {name}"]
    return [f'"{w}"' for w in words[1:2]] or [f"{words[0]}("]  # `raylane("--version")`


TESTS = {path: path.read_text() for path in (ROOT / "tests").rglob("*.py")}


def run_by_a_test(head: str, flags: list[str]) -> bool:
    """Some test file names the subcommand, and each flag is quoted by one of those files."""
    needed, words = evidence(head), head.split()
    # A nested subcommand (`raylane models rollback`) must be quoted too.
    sub = f'"{words[2]}"' if words[0] == "raylane" and len(words) > 2 else ""
    running = [t for t in TESTS.values() if any(e in t for e in needed) and sub in t]
    quoted = {flag for flag in flags for text in running if f'"{flag}"' in text}
    return bool(running) and quoted >= set(flags) - set(FLAGS_NOT_RUN_BY_TESTS)


def documented() -> list[tuple[str, str]]:
    """(doc, command) pairs; `ray job submit ... -- python -m X ...` gives both commands."""
    pairs = []
    for doc in DOCS:
        for command in commands_in(doc.read_text()):
            parts = command.split(" -- ", 1)
            pairs += [(str(doc.relative_to(ROOT)), part.strip()) for part in parts]
    return pairs


@pytest.mark.parametrize(("doc", "command"), documented())
def test_every_documented_command_is_run_somewhere(doc, command):
    head, flags = signature(command)
    if any(head.startswith(prefix) for prefix in NOT_RUN_BY_TESTS):
        return
    assert head.split()[0] in PROGRAMS, (
        f"{doc} shows `{command}`: a program this test does not know; add it to PROGRAMS (and "
        "a test that runs it) or to NOT_RUN_BY_TESTS with the reason"
    )
    assert run_by_a_test(head, flags), (
        f"{doc} shows `{command}` ({head} {' '.join(flags)}) but no test runs it: add a test "
        "that quotes its subcommand and flags, or list it in NOT_RUN_BY_TESTS with the reason"
    )


def test_token_auth_is_explained_where_jobs_are_submitted():
    for doc in DOCS:
        text = doc.read_text()
        if "ray job submit" in text:
            assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN" in text, doc.name

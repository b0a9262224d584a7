"""Trust boundaries of loading a model (workloads/trust.py, workloads/checkpoint.py): a registry
entry never chooses what code runs, and a corrupt or hostile file is one clear line.

The attacker here can write to the registry: they plant a module inside a version's own folder
under the default local storage (./artifacts, on the import path as the working directory is),
or name any importable module in meta.json. Each planted module writes a marker file when its
top-level code runs, so "nothing was imported" is something the test can see.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import digits_checkpoint, digits_data

from cluster.errors import ConfigError, DataError, run_cli
from cluster.storage import Storage
from serve import predictor as predictor_cli
from serve.predictor import Predictor
from workloads import evaluate as evaluate_cli
from workloads.checkpoint import load_train_state, open_registry
from workloads.config import ModelConfig
from workloads.models import build_model, model_spec
from workloads.trust import ENV_CUSTOM_MODULES, CodePolicy

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A project directory as a user has it: cwd, on the import path, storage in ./artifacts."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_CUSTOM_MODULES, raising=False)
    return tmp_path


def planted(directory: Path, module: str, marker: Path) -> None:
    """A module that, imported, leaves `marker` behind and offers an nn.Module `Net`."""
    path = directory / f"{module}.py"
    path.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from torch import nn\n"
        "class Net(nn.Linear):\n"
        "    def __init__(self, **kwargs):\n"
        "        super().__init__(64, 10)\n"
    )


def register_custom(registry, tmp_path, custom_class: str) -> int:
    """A real digits version whose meta.json names `custom_class` as its model."""
    source = digits_checkpoint(tmp_path / "source", seed=1, steps=1)
    meta = json.loads((source / "meta.json").read_text())
    meta["model"] = {"family": "custom", "class": custom_class, "kwargs": {}}
    (source / "meta.json").write_text(json.dumps(meta))
    return registry.register("digits", source, lineage={})


def test_a_module_planted_in_a_version_folder_is_never_imported(workdir):
    registry = open_registry(Storage("artifacts"))
    registry.register("digits", digits_checkpoint(workdir / "v1", seed=1, steps=1), lineage={})
    dotted = "artifacts." + registry.version_key("digits", 2).replace("/", ".")
    assert register_custom(registry, workdir, f"{dotted}.evil:Net") == 2
    marker = workdir / "pwned"
    planted(workdir / "artifacts" / "registry" / "digits" / "versions" / "2", "evil", marker)

    with pytest.raises(
        ConfigError, match=f"loading custom model code is off.*{ENV_CUSTOM_MODULES}"
    ):
        Predictor.from_registry(registry, "digits:2")
    # Even an operator who allows the prefix never gets code from inside the storage root.
    with pytest.raises(ConfigError, match="inside the storage root"):
        Predictor.from_registry(registry, "digits:2", allow_modules=["artifacts"])
    assert not marker.exists()
    assert Predictor.from_registry(registry, "digits:1").version == 1  # built-ins need no import


def test_a_harmless_module_name_is_not_imported_either(workdir):
    registry = open_registry(Storage("artifacts"))
    marker = workdir / "ran"
    planted(workdir, "innocent_looking", marker)
    register_custom(registry, workdir, "innocent_looking:Whatever")
    with pytest.raises(ConfigError, match="'innocent_looking:Whatever'"):
        Predictor.from_registry(registry, "digits:1")
    assert not marker.exists() and "innocent_looking" not in sys.modules


def test_a_custom_class_on_the_allow_list_loads_and_predicts(workdir, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    registry = open_registry(Storage("artifacts"))
    register_custom(registry, workdir, "fixtures_user_model:TinyNet")
    # TinyNet needs its kwargs: write a version as training would, with the real spec.
    spec = model_spec(
        ModelConfig(family="custom", custom_class="fixtures_user_model:TinyNet"),
        input_shape=[1, 8, 8],
        num_classes=10,
    )
    source = digits_checkpoint(workdir / "custom", seed=1, steps=1)
    meta = json.loads((source / "meta.json").read_text())
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    from workloads.checkpoint import save_checkpoint

    save_checkpoint(source, model=model, meta={**meta, "model": spec})
    version = registry.register("digits", source, lineage={})

    monkeypatch.setenv(ENV_CUSTOM_MODULES, "some_other_pkg, fixtures_user_model")
    predictor = Predictor.from_registry(registry, f"digits:{version}")
    features, _ = digits_data()
    assert len(predictor.predict(features[:4]).labels) == 4


def corrupt_cases(directory: Path) -> dict:
    weights = directory / "model.safetensors"
    return {
        "garbage weights": lambda: weights.write_bytes(b"\x00" * 64),
        "huge header": lambda: weights.write_bytes((2**62).to_bytes(8, "little") + b"{}"),
        "truncated weights": lambda: weights.write_bytes(weights.read_bytes()[:100]),
        "meta not JSON": lambda: (directory / "meta.json").write_text("{not json"),
        "meta a list": lambda: (directory / "meta.json").write_text("[1, 2]"),
        "unknown family": lambda: _edit_meta(directory, model={"family": "svm", "kwargs": {}}),
        "old format": lambda: _edit_meta(directory, format_version=0),
        "no input": lambda: _edit_meta(directory, input=None),
    }


def _edit_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, **changes}))


EXPECTED = {
    "garbage weights": "corrupt or not a safetensors file",
    "huge header": "corrupt or not a safetensors file",
    "truncated weights": "corrupt or not a safetensors file",
    "meta not JSON": "is not valid JSON",
    "meta a list": "is not a JSON object",
    "unknown family": "unknown model family 'svm'",
    "old format": "has checkpoint format 0",
    "no input": "no usable 'input' section",
}


def corrupt_version(workdir: Path, case: str) -> Path:
    """A registry version 1 of `digits` in ./artifacts, corrupted as `case` says."""
    directory = digits_checkpoint(workdir / "ckpt", seed=1, steps=1)
    corrupt_cases(directory)[case]()
    version = workdir / "artifacts" / "registry" / "digits" / "versions" / "1"
    version.mkdir(parents=True)
    for file in directory.iterdir():  # by hand: the registry would refuse some of these
        (version / file.name).write_bytes(file.read_bytes())
    (version / "lineage.json").write_text("{}")
    (workdir / "samples.json").write_text(json.dumps({"instances": [[0.0] * 64]}))
    return directory


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_a_corrupt_version_is_one_line_from_predict_and_evaluate(case, workdir, capsys):
    directory = corrupt_version(workdir, case)
    commands = [
        (predictor_cli.main, ["--model", "digits:1", "--input", "samples.json"]),
        (evaluate_cli.main, [str(directory)]),
    ]
    for main, argv in commands:
        with pytest.raises(SystemExit) as exit_:
            run_cli(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
        assert EXPECTED[case] in err[0] and "weights_only" not in err[0]


def test_the_installed_commands_print_that_line_without_a_traceback(workdir):
    directory = corrupt_version(workdir, "huge header")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for command in (
        [str(BIN / "raylane"), "predict", "--model", "digits:1", "--input", "samples.json"],
        [sys.executable, "-m", "workloads.evaluate", str(directory)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert "corrupt or not a safetensors file" in lines[0]


def test_a_hostile_train_state_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (tmp_path / "train_state.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    with pytest.raises(DataError) as caught:
        load_train_state(tmp_path)
    message = str(caught.value)
    assert "holds objects other than tensors" in message and "weights_only=False" not in message
    assert "\n" not in message and not marker.exists()

"""int8 versions (`raylane optimize quantize`): the stored format, its size and accuracy, what
tampering does to it, and the command on a local registry (no Ray: quantizing needs none)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from helpers import digits_checkpoint, register_local
from safetensors.torch import load_file, save_file

from cluster.errors import ConfigError, DataError, NotFoundError
from cluster.storage import Storage
from serve.predictor import Predictor
from workloads.checkpoint import (
    input_spec_of,
    load_model,
    model_footprint,
    model_from_state,
    open_registry,
)
from workloads.data import prepare, read_split
from workloads.inference import probabilities
from workloads.optimize import main as optimize
from workloads.quantize import quantize_checkpoint
from workloads.trust import CodePolicy

POLICY = CodePolicy.CONFIGURED


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Digits data, a Linear-heavy MLP and a small CNN trained on it, and their int8 versions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_thread
    root = tmp_path_factory.mktemp("quantize")
    storage = Storage(str(root / "store"))
    uri = prepare(storage, "digits").uri
    wide = digits_checkpoint(root / "wide", seed=1, steps=30, data_uri=uri, hidden_sizes=(256, 256))
    cnn = digits_checkpoint(root / "cnn", seed=1, steps=80, family="cnn", data_uri=uri)
    int8 = {
        "dynamic": quantize_checkpoint(wide, root / "wide-int8", policy=POLICY, scheme="dynamic"),
        "static": quantize_checkpoint(
            cnn, root / "cnn-int8", policy=POLICY, scheme="static", calibration_rows=256
        ),
    }
    yield {"root": root, "storage": storage, "wide": wide, "cnn": cnn, "int8": int8}
    torch.set_num_threads(threads)


def accuracy(directory) -> float:
    module, meta = load_model(directory, policy=POLICY)
    spec = input_spec_of(meta)
    features, labels = read_split(
        meta["data_uri"], spec, validation_fraction=0.2, split="validation"
    )
    return float((probabilities(module, spec, features).argmax(1) == labels).mean())


def test_dynamic_int8_of_a_linear_heavy_mlp_is_under_a_third_of_the_bytes(made):
    assert made["int8"]["dynamic"]["int8_operators"] == {"MatMulInteger": 3}
    parent, child = model_footprint(made["wide"]), model_footprint(made["root"] / "wide-int8")
    assert child["parameters"] == parent["parameters"] > 80_000
    assert child["bytes"] <= 0.3 * parent["bytes"]


@pytest.mark.parametrize("parent, child", [("wide", "wide-int8"), ("cnn", "cnn-int8")])
def test_int8_is_within_one_point_of_its_parents_accuracy(made, parent, child):
    assert accuracy(made["root"] / child) == pytest.approx(accuracy(made[parent]), abs=0.01)


def test_static_int8_quantizes_the_convolutions(made):
    graph = (made["root"] / "cnn-int8" / "model.onnx").read_bytes()
    assert made["int8"]["static"]["int8_operators"]["QuantizeLinear"] >= 2
    assert b"Conv" in graph and b"DynamicQuantizeLinear" not in graph


def test_the_predictor_serves_an_int8_checkpoint_as_it_predicts_in_process(made):
    directory = made["root"] / "wide-int8"
    module, meta = load_model(directory, policy=POLICY)
    predictor = Predictor.from_checkpoint(directory, name="digits", version=7, policy=POLICY)
    features, _ = read_split(meta["data_uri"], predictor.schema.spec, validation_fraction=0.2,
                             split="validation")  # fmt: skip
    body = predictor.predict_instances(features[:20].tolist(), max_instances=64)
    expected = probabilities(module, predictor.schema.spec, features[:20])
    assert body["version"] == 7
    assert np.allclose(body["probabilities"], expected, atol=1e-6)


def tampered(made, tmp_path, edit) -> str:
    """Edit a copy of the int8 checkpoint; the one-line error loading it gives."""
    copy = shutil.copytree(made["root"] / "wide-int8", tmp_path / "copy")
    edit(copy)
    with pytest.raises(DataError) as error:
        load_model(copy, policy=POLICY)
    assert "\n" not in str(error.value)
    return str(error.value)


def set_scheme(scheme):
    def edit(directory):
        meta = json.loads((directory / "meta.json").read_text())
        meta["quantization"]["scheme"] = scheme
        (directory / "meta.json").write_text(json.dumps(meta))

    return edit


def test_a_scheme_that_does_not_match_the_graph_is_refused(made, tmp_path):
    message = tampered(made, tmp_path, set_scheme("static"))
    assert "scheme 'static'" in message and "dynamic int8" in message


def test_an_unknown_scheme_is_refused(made, tmp_path):
    assert "scheme 'int4' is unknown" in tampered(made, tmp_path, set_scheme("int4"))


def test_missing_scales_are_named(made, tmp_path):
    def drop_a_scale(directory):
        tensors = load_file(str(directory / "model.safetensors"))
        scale = next(name for name in tensors if name.endswith("_scale"))
        del tensors[scale]
        save_file(tensors, str(directory / "model.safetensors"))

    assert "lack 1 tensor(s)" in tampered(made, tmp_path, drop_a_scale)


def test_a_missing_graph_is_named(made, tmp_path):
    message = tampered(made, tmp_path, lambda directory: (directory / "model.onnx").unlink())
    assert "model.onnx is missing" in message


def test_a_graph_that_points_at_files_outside_is_refused(made, tmp_path):
    import onnx
    from onnx import helper

    def point_outside(directory):
        model = onnx.load_model_from_string((directory / "model.onnx").read_bytes())
        tensor = helper.make_tensor("leak", onnx.TensorProto.FLOAT, [1], [0.0])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/hostname")
        model.graph.node.append(helper.make_node("Constant", [], ["leaked"], value=tensor))
        (directory / "model.onnx").write_bytes(model.SerializeToString())

    assert "external data" in tampered(made, tmp_path, point_outside)


def test_loading_an_int8_checkpoint_unpickles_nothing(made, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    module, _ = load_model(made["root"] / "wide-int8", policy=POLICY)
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_an_int8_checkpoint_is_not_quantized_again(made, tmp_path):
    with pytest.raises(ConfigError, match="already int8"):
        quantize_checkpoint(made["root"] / "wide-int8", tmp_path / "x", policy=POLICY,
                            scheme="dynamic")  # fmt: skip


def test_the_command_registers_a_child_with_lineage_and_compares_it(made, tmp_path, capsys):
    storage = Storage(str(tmp_path / "store"))
    registry = open_registry(storage)
    register_local(registry, made["wide"])
    args = ["quantize", "--model", "digits:1", "--storage", storage.uri]
    assert optimize([*args, "--register", "digits-int8", "--promote", "small"]) == 0
    described = registry.describe("digits-int8", 1)
    assert described["lineage"]["parent"] == "digits:1"
    assert described["lineage"]["method"] == "quantize"
    assert described["lineage"]["settings"]["scheme"] == "dynamic"
    assert registry.resolve("digits-int8@small") == ("digits-int8", 1)
    assert registry.reports("digits-int8", 1) == ["validation"]
    out = capsys.readouterr().out
    for row in ("accuracy", "parameters", "bytes on disk", "latency ms, batch 1", "batch 32"):
        assert row in out


def test_a_failed_run_registers_nothing(made, tmp_path):
    storage = Storage(str(tmp_path / "store"))
    registry = open_registry(storage)
    directory = shutil.copytree(made["wide"], tmp_path / "no-data")
    meta = json.loads((directory / "meta.json").read_text())
    del meta["data_uri"]
    (directory / "meta.json").write_text(json.dumps(meta))
    register_local(registry, directory)
    args = ["quantize", "--model", "digits:1", "--storage", storage.uri, "--scheme", "static"]
    with pytest.raises(ConfigError, match="use --scheme dynamic"):
        optimize([*args, "--calibration-rows", "64"])
    with pytest.raises(NotFoundError):
        optimize(["quantize", "--model", "digits:9", "--storage", storage.uri])
    assert registry.versions("digits") == [1]


def test_an_int8_model_is_rebuilt_from_its_state_dict_as_ray_data_actors_do(made):
    module, meta = load_model(made["root"] / "cnn-int8", policy=POLICY)
    rebuilt = model_from_state(meta, module.state_dict(), policy=POLICY)
    batch = torch.randn(5, 1, 8, 8)
    assert torch.equal(rebuilt(batch), module(batch))

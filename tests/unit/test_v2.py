"""The Open Inference Protocol v2 without Ray: tensors in (REST JSON and gRPC messages), the
bad-tensor table, tensors out, the committed stubs, the gRPC proxy's bind hook.

    PYTHONPATH=. .venv/bin/python -m pytest tests/unit/test_v2.py -q
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import digits_checkpoint, digits_data, png_base64, text_checkpoint, tokens_checkpoint

from serve.grpc_proxy import HOST_ENV, bind_grpc_to_host, serve_start_options
from serve.predictor import Predictor
from serve.proto import grpc_predict_v2_pb2 as pb
from serve.schemas import RequestError
from serve.v2 import (
    grpc_code,
    infer_request_from_grpc,
    infer_request_from_json,
    infer_response_grpc,
    infer_response_json,
    model_metadata,
    rows_from_inputs,
)
from workloads.trust import CodePolicy

ROOT = Path(__file__).resolve().parents[2]
PROTO = "serve/proto/grpc_predict_v2.proto"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Predictor:
    directory = digits_checkpoint(tmp_path_factory.mktemp("v2") / "digits", seed=1, steps=20)
    return Predictor.from_checkpoint(
        directory, name="digits", version=3, policy=CodePolicy.CONFIGURED
    )


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Predictor:
    directory = tokens_checkpoint(tmp_path_factory.mktemp("v2") / "tokens")
    return Predictor.from_checkpoint(
        directory, name="text", version=1, policy=CodePolicy.CONFIGURED
    )


def body(data, *, shape, datatype="FP32", name="input", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def rest_rows(predictor: Predictor, payload) -> np.ndarray:
    infer = infer_request_from_json(payload)
    return rows_from_inputs(predictor.schema, infer.inputs, max_instances=16)


def grpc_request(rows: np.ndarray, *, datatype="FP32", shape=None, raw=False, **fields):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype=datatype, shape=shape or list(rows.shape)
    )
    request = pb.ModelInferRequest(model_name="digits", inputs=[tensor], **fields)
    dtype, contents_field = {"FP32": ("<f4", "fp32_contents"), "INT64": ("<i8", "int64_contents"),
                             "FP64": ("<f8", "fp64_contents")}[datatype]  # fmt: skip
    if raw:
        request.raw_input_contents.append(rows.astype(dtype).tobytes())
    else:
        getattr(request.inputs[0].contents, contents_field).extend(rows.ravel().tolist())
    return request


def test_rest_and_grpc_tensors_give_the_rows_and_answers_of_v1(digits):
    features, _ = digits_data()
    rows = features[:3]
    expected = digits.schema.parse(rows.tolist(), max_instances=16)
    nested = rows.reshape(3, 1, 8, 8)
    for payload in (
        body(rows.ravel().tolist(), shape=[3, 64]),
        body(nested.tolist(), shape=[3, 1, 8, 8], datatype="FP64"),
        body(rows.reshape(3, 8, 8).astype(int).tolist(), shape=[3, 8, 8], datatype="INT64"),
    ):
        assert np.array_equal(rest_rows(digits, payload), expected)
    for request in (
        grpc_request(rows),
        grpc_request(rows, raw=True),
        grpc_request(nested, raw=True),
    ):
        infer = infer_request_from_grpc(request)
        assert np.array_equal(
            rows_from_inputs(digits.schema, infer.inputs, max_instances=16), expected
        )

    answer = digits.response(digits.predict(expected))
    infer = infer_request_from_json(body(rows.ravel().tolist(), shape=[3, 64], id="r1"))
    rest = infer_response_json(answer, infer)
    assert (rest["model_name"], rest["model_version"], rest["id"]) == ("digits", "3", "r1")
    by_name = {t["name"]: t for t in rest["outputs"]}
    assert by_name["predictions"] == {"name": "predictions", "datatype": "BYTES", "shape": [3],
                                      "data": answer["predictions"]}  # fmt: skip
    assert by_name["probabilities"]["shape"] == [3, 10]
    assert np.allclose(by_name["probabilities"]["data"], np.ravel(answer["probabilities"]))

    reply = infer_response_grpc(answer, infer_request_from_grpc(grpc_request(rows)))
    assert reply.model_version == "3"
    labels = [b.decode() for b in reply.outputs[0].contents.bytes_contents]
    assert labels == answer["predictions"]
    assert np.allclose(reply.outputs[1].contents.fp32_contents, np.ravel(answer["probabilities"]))


def test_requested_outputs_only_are_returned(digits):
    answer = digits.response(digits.predict(digits.schema.parse([[0.0] * 64], max_instances=1)))
    infer = infer_request_from_json(
        body([0] * 64, shape=[1, 64], outputs=[{"name": "predictions"}])
    )
    assert [t["name"] for t in infer_response_json(answer, infer)["outputs"]] == ["predictions"]


ROW = [1.0] * 64
BAD_REST = [
    ("not an object", [1, 2], 422, "the body is a list"),
    ("unknown field", {"instances": [ROW]}, 422, 'unknown field "instances"'),
    ("no inputs", {"inputs": []}, 422, '"inputs" must be a non-empty list'),
    ("missing datatype", {"inputs": [{"name": "input", "shape": [1, 64], "data": ROW}]}, 422,
     'lacks "datatype"'),
    ("wrong input name", body(ROW, shape=[1, 64], name="x"), 422,
     'this model takes one input named "input"'),
    ("wrong shape", body(ROW, shape=[2, 32]), 422, "has shape [2, 32]; expected [N, 1, 8, 8]"),
    ("1-d shape", body(ROW, shape=[64]), 422, "has shape [64]; expected"),
    ("size mismatch", body(ROW, shape=[2, 64]), 422, "has 64 values but its shape [2, 64] needs 128"),
    ("bad datatype", body(ROW, shape=[1, 64], datatype="FP16"), 422, "expected one of FP32"),
    ("BYTES of pixels", body(["a"] * 64, shape=[1, 64], datatype="BYTES"), 422,
     "expected [N] or [N, 1]"),
    ("bad base64 image", body(["%%%"], shape=[1], datatype="BYTES"), 422,
     "input[0] is a string but not valid base64"),
    ("string value", body(["x", *ROW[1:]], shape=[1, 64]), 422, 'value 0 is the string "x"'),
    ("float in INT64", body(ROW, shape=[1, 64], datatype="INT64"), 422, "holds integers"),
    ("INT32 overflow", body([2**40] * 64, shape=[1, 64], datatype="INT32"), 422, "INT32 range"),
    ("ragged data", body([[1.0] * 32, [1.0] * 31], shape=[1, 64]), 422, "row-major nested"),
    ("negative shape", body(ROW, shape=[-1, 64]), 422, "non-negative integers"),
    ("too many rows", body(ROW * 17, shape=[17, 64]), 422, "send 1 to 16 per request"),
    ("zero rows", body([], shape=[0, 64]), 422, "send 1 to 16 per request"),
    ("infinite value", body([1e39, *ROW[1:]], shape=[1, 64]), 422, "input[0] holds"),
    ("unknown output", body(ROW, shape=[1, 64], outputs=[{"name": "logits"}]), 422,
     'unknown output "logits"'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "payload", "status", "message"), BAD_REST, ids=[c[0] for c in BAD_REST]
)
def test_bad_rest_tensors_get_a_4xx_that_says_what_was_expected(
    digits, case, payload, status, message
):
    with pytest.raises(RequestError) as caught:
        rows = rest_rows(digits, payload)
        answer = digits.response(digits.predict(rows))
        infer_response_json(answer, infer_request_from_json(payload))
    assert caught.value.status_code == status
    assert message in str(caught.value)
    assert grpc_code(status) == grpc.StatusCode.INVALID_ARGUMENT


BAD_GRPC = [
    ("wrong contents field", grpc_request(np.ones((1, 64)), datatype="FP64", shape=[1, 64]),
     "send its values in fp64_contents"),
    ("raw bytes not whole", pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[b"\0" * 255]), "not whole FP32s"),
    ("raw count", pb.ModelInferRequest(raw_input_contents=[b"", b""]), "2 raw_input_contents"),
    ("no inputs", pb.ModelInferRequest(), "no inputs"),
    ("size", grpc_request(np.ones((1, 64)), shape=[2, 64]), "needs 128"),
    ("datatype", pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="BOOL", shape=[1])]), 'datatype "BOOL"'),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "message"), BAD_GRPC, ids=[c[0] for c in BAD_GRPC])
def test_bad_grpc_tensors_are_invalid_argument(case, request_, message):
    if case == "wrong contents field":
        request_.inputs[0].datatype = "FP64"
        request_.inputs[0].contents.Clear()
        request_.inputs[0].contents.fp32_contents.extend([1.0] * 64)
    with pytest.raises(RequestError) as caught:
        infer_request_from_grpc(request_)
    assert message in str(caught.value)
    assert grpc_code(caught.value.status_code) == grpc.StatusCode.INVALID_ARGUMENT


def test_token_models_take_integer_ids_padded_to_their_length(tokens):
    rows = rest_rows(tokens, body([1, 2, 3, 4, 5, 6], shape=[2, 3], datatype="INT32"))
    assert rows.tolist() == [[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 0, 0, 0, 0, 0]]
    for payload, message in (
        (body([1.0, 2.0], shape=[1, 2]), "expected one of INT32, INT64"),
        (body([1] * 9, shape=[1, 9], datatype="INT64"), "with L from 1 to 8"),
        (body([99], shape=[1, 1], datatype="INT64"), "input[0][0] is token id 99"),
    ):
        with pytest.raises(RequestError, match=message.replace("[", r"\[")):
            rest_rows(tokens, payload)
    metadata = model_metadata(name="text", version=1, schema=tokens.schema)
    assert metadata["inputs"] == [{"name": "input", "datatype": "INT64", "shape": [-1, -1]}]


def test_text_and_image_models_take_strings_as_bytes_tensors(tmp_path, digits):
    text = Predictor.from_checkpoint(
        text_checkpoint(tmp_path / "text"), name="news", version=1, policy=CodePolicy.CONFIGURED
    )
    sentences = ["markets rally as rates fall", "the team wins the final"]
    expected = text.schema.parse(sentences, max_instances=16)
    for shape in ([2], [2, 1]):
        rows = rest_rows(text, body(sentences, shape=shape, datatype="BYTES"))
        assert np.array_equal(rows, expected)
    request = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="BYTES", shape=[2],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in sentences]))])  # fmt: skip
    infer = infer_request_from_grpc(request)
    assert np.array_equal(rows_from_inputs(text.schema, infer.inputs, max_instances=16), expected)
    with pytest.raises(RequestError, match="expected one of BYTES"):
        rest_rows(text, body([1.0], shape=[1, 1]))
    with pytest.raises(RequestError, match="value 0 is the number 7; a BYTES tensor holds strings"):
        rest_rows(text, body([7], shape=[1], datatype="BYTES"))
    metadata = model_metadata(name="news", version=1, schema=text.schema)
    assert metadata["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]

    pixels = (digits_data()[0][:2].reshape(2, 8, 8)).astype(np.uint8)
    images = [png_base64(p) for p in pixels]
    rows = rest_rows(digits, body(images, shape=[2], datatype="BYTES"))
    assert np.array_equal(
        rows, digits.schema.parse(pixels.reshape(2, 64).tolist(), max_instances=16)
    )


def test_model_metadata_names_versions_inputs_and_outputs(digits):
    metadata = model_metadata(name="digits", version=3, schema=digits.schema)
    assert metadata["versions"] == ["3"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predictions", "probabilities"]
    assert pb.ModelMetadataResponse(**metadata).outputs[1].shape == [-1, 10]


def test_status_codes_map_to_grpc_codes_never_internal_for_a_client_mistake():
    assert grpc_code(401) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(422) == grpc_code(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(500) == grpc.StatusCode.INTERNAL


def test_committed_stubs_equal_what_make_proto_generates(tmp_path):
    pytest.importorskip("grpc_tools")
    (tmp_path / "serve/proto").mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
               "--grpc_python_out=.", PROTO]  # fmt: skip
    assert command[1:] == ["-m", *_make_proto_command()]  # what "proto" (make proto) runs
    subprocess.run(command, cwd=tmp_path, check=True)
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
        generated, committed = tmp_path / "serve/proto" / name, ROOT / "serve/proto" / name
        assert filecmp.cmp(generated, committed, shallow=False), f"run `make proto`: {name}"


def _make_proto_command() -> list[str]:
    """The protoc arguments that `make proto` runs."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^proto: .*\n\t\$\(BIN\)/python \$\(PROTO_COMMAND\)$", makefile, re.M)
    line = next(x for x in makefile.splitlines() if x.startswith("PROTO_COMMAND"))
    return line.split(":=", 1)[1].split()[1:]


def test_the_grpc_proxy_binds_to_the_http_host(monkeypatch):
    from ray.serve._private import default_impl
    from ray.serve.config import ControllerOptions, gRPCOptions

    options = serve_start_options(host="127.0.0.1", port=8000, grpc_port=9000)
    grpc_options = gRPCOptions(**options["grpc_options"])
    assert grpc_options.grpc_servicer_func_callable  # the servicer path imports
    ControllerOptions(**options["controller_options"])  # Ray's own rules accept it
    assert "grpc_options" not in serve_start_options(host="127.0.0.1", port=8000)

    bound = []

    class Server:
        def add_insecure_port(self, address):
            bound.append(address)

    monkeypatch.setattr(default_impl, "add_grpc_address", default_impl.add_grpc_address)
    for host, expected in (("127.0.0.1", "127.0.0.1:9000"), ("::1", "[::1]:9000")):
        monkeypatch.setenv(HOST_ENV, host)
        bind_grpc_to_host()
        default_impl.add_grpc_address(Server(), "[::]:9000")
        assert bound[-1] == expected

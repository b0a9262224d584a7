"""The Open Inference Protocol v2 (KServe, Triton, Seldon) as plain functions, shared by the REST
routes and the gRPC service (serve/v2_server.py). Pure: no Ray, no torch.

    infer = infer_request_from_json(parse_json_body(body))    # POST /v2/models/NAME/infer
    infer = infer_request_from_grpc(request)                  # ModelInfer
    rows = rows_from_inputs(schema, infer.inputs, max_instances=256)
    outputs = output_tensors(predictor.response(prediction), infer.outputs)

A model takes one input tensor, named "input", of shape [N, F] (F the model's flat feature
count) or [N, *S] (S its per-instance shape, as GET /v2/models/NAME shows), datatype FP32,
FP64, INT32 or INT64; a token model takes INT32 or INT64 ids of shape [N, L'] with L' up to its
length (shorter rows are padded with 0); a text model takes BYTES [N], one string per row
(an image model also base64 PNG/JPEG strings). It answers two outputs: "predictions" (BYTES [N], the
class names) and "probabilities" (FP32 [N, C]); the response's model_version names the version
that answered. Every mistake is a RequestError whose status (400/404/413/422) the REST route
sends and `grpc_code` turns into INVALID_ARGUMENT, NOT_FOUND, ...; its message names the
tensor and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from serve.proto import grpc_predict_v2_pb2 as pb
from serve.schemas import InputSchema, RequestError, _json_type, _regular_grid, quote

INPUT_NAME = "input"
OUTPUTS = ("predictions", "probabilities")
REQUEST_FORM = '{"inputs": [{"name": "input", "shape": [N, F], "datatype": "FP32", "data": [...]}]}'
# datatype -> (numpy dtype of raw little-endian bytes, InferTensorContents field)
DATATYPES = {
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
}
TOKEN_DATATYPES = ("INT32", "INT64")


@dataclass(frozen=True)
class Tensor:
    """One input tensor as sent: its values flat, in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class InferRequest:
    inputs: list[Tensor]
    outputs: list[str] = field(default_factory=list)  # empty: all outputs
    id: str = ""


# ---------------------------------------------------------------------- decoding: REST JSON


def infer_request_from_json(payload: Any) -> InferRequest:
    """A parsed JSON body -> an InferRequest, or a 422 that says what the body lacks."""
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body is {_json_type(payload)}; expected {REQUEST_FORM}")
    unknown = sorted(set(payload) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise RequestError(422, f"unknown field {quote(unknown[0])}; expected {REQUEST_FORM}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, f'"inputs" must be a non-empty list; expected {REQUEST_FORM}')
    outputs = payload.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError(422, '"outputs" must be a list of {"name": ...}')
    request_id = payload.get("id", "")
    if not isinstance(request_id, str):
        raise RequestError(422, f'"id" is {_json_type(request_id)}; expected a string')
    tensors = [_tensor_from_json(tensor, i) for i, tensor in enumerate(inputs)]
    return InferRequest(tensors, [o["name"] for o in outputs], request_id)


def _tensor_from_json(tensor: Any, index: int) -> Tensor:
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise RequestError(422, f"{where} is {_json_type(tensor)}; expected {REQUEST_FORM}")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise RequestError(422, f"{where} lacks {quote(missing[0])}; expected {REQUEST_FORM}")
    name, datatype = tensor["name"], tensor["datatype"]
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise RequestError(422, f'{where}: "name" and "datatype" must be strings')
    shape = _shape(tensor["shape"], name)
    data = tensor["data"]
    grid = _regular_grid(data, max_ndim=len(shape)) if isinstance(data, list) else None
    if grid is None or any(isinstance(leaf, list) for leaf in grid[1]):
        raise RequestError(
            422, f'input "{name}": "data" must be a flat (or row-major nested) list of numbers'
        )
    leaves = grid[1]
    _check_size(name, shape, len(leaves))
    return Tensor(name, datatype, shape, _values(name, datatype, leaves))


def _shape(shape: Any, name: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(
            422, f'input "{name}": "shape" must be a list of non-negative integers, like [N, F]'
        )
    return tuple(shape)


def _values(name: str, datatype: str, leaves: list) -> np.ndarray:
    """JSON numbers -> a flat array of the datatype; a value of the wrong kind is named."""
    if datatype == "BYTES":
        for position, value in enumerate(leaves):
            if not isinstance(value, str):
                what = _json_type(value)
                raise RequestError(
                    422, f'input "{name}" value {position} is {what}; a BYTES tensor holds strings'
                )
        return np.array(leaves, dtype=object).reshape(-1)
    if datatype not in DATATYPES:
        raise _bad_datatype(name, datatype, (*DATATYPES, "BYTES"))
    integers = datatype.startswith("INT")
    for position, value in enumerate(leaves):
        if type(value) is not int and (integers or type(value) is not float):
            kind = "integers" if integers else "numbers"
            raise RequestError(
                422,
                f'input "{name}" value {position} is {_json_type(value)}; a {datatype} tensor '
                f"holds {kind}",
            )
    try:  # a float beyond float32 becomes inf here, refused with the schema's finite check
        with np.errstate(over="ignore"):
            return np.array(leaves, dtype=DATATYPES[datatype][0])
    except OverflowError:
        raise RequestError(422, f'input "{name}" holds a value out of {datatype} range') from None


# ---------------------------------------------------------------------- decoding: gRPC


def infer_request_from_grpc(request: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest -> an InferRequest: values from `contents` or `raw_input_contents`."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            422,
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input",
        )
    tensors = []
    for index, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if datatype == "BYTES":
            data = _grpc_strings(tensor, bool(raw))
        elif datatype not in DATATYPES:
            raise _bad_datatype(name, datatype, (*DATATYPES, "BYTES"))
        else:
            data = _grpc_numbers(tensor, raw[index] if raw else None)
        if any(d < 0 for d in shape):
            raise RequestError(422, f'input "{name}": shape {list(shape)} has a negative size')
        _check_size(name, shape, data.size)
        tensors.append(Tensor(name, datatype, shape, data))
    if not tensors:
        raise RequestError(422, f'no inputs; send one tensor named "{INPUT_NAME}"')
    return InferRequest(tensors, [o.name for o in request.outputs], request.id)


def _grpc_strings(tensor, raw: bool) -> np.ndarray:
    """BYTES contents -> an array of str (UTF-8); raw BYTES (length-prefixed) are not taken."""
    if raw:
        raise RequestError(
            422, f'input "{tensor.name}" is BYTES: send its values in bytes_contents, not raw'
        )
    try:
        return np.array([b.decode() for b in tensor.contents.bytes_contents], dtype=object)
    except UnicodeDecodeError:
        raise RequestError(
            422, f'input "{tensor.name}" holds bytes that are not UTF-8 text or base64'
        ) from None


def _grpc_numbers(tensor, raw: bytes | None) -> np.ndarray:
    """Numeric contents (the datatype's field) or raw little-endian bytes -> a flat array."""
    name, datatype = tensor.name, tensor.datatype
    dtype, contents_field = DATATYPES[datatype]
    if raw is not None:
        if len(raw) % np.dtype(dtype).itemsize:
            raise RequestError(
                422, f'input "{name}": {len(raw)} raw bytes are not whole {datatype}s'
            )
        return np.frombuffer(raw, dtype=dtype)
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if used and used != [contents_field]:
        raise RequestError(
            422, f'input "{name}" is {datatype}: send its values in {contents_field}'
        )
    return np.asarray(getattr(tensor.contents, contents_field), dtype=dtype)


def _check_size(name: str, shape: tuple[int, ...], count: int) -> None:
    if math.prod(shape) != count:
        raise RequestError(
            422, f'input "{name}" has {count} values but its shape {list(shape)} needs '
            f"{math.prod(shape)}",
        )  # fmt: skip


def _bad_datatype(name: str, datatype: str, accepted: tuple[str, ...]) -> RequestError:
    return RequestError(
        422, f'input "{name}" has datatype {quote(datatype)}; expected one of {", ".join(accepted)}'
    )


# ---------------------------------------------------------------------- tensors -> model rows


def rows_from_inputs(schema: InputSchema, inputs: list[Tensor], *, max_instances: int):
    """The one input tensor -> validated raw rows (N, F), as InputSchema.parse makes them."""
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(quote(t.name) for t in inputs)
        raise RequestError(
            422, f'inputs {names}: this model takes one input named "{INPUT_NAME}"'
        )  # fmt: skip
    tensor = inputs[0]
    accepted = input_datatypes(schema)
    if tensor.datatype not in accepted:
        raise _bad_datatype(tensor.name, tensor.datatype, accepted)
    shapes = input_shapes(schema, tensor.datatype)
    if not tensor.shape or not any(_fits(tensor.shape[1:], s, schema) for s in shapes):
        wanted = " or ".join(_shape_text(s, schema) for s in shapes)
        raise RequestError(
            422, f'input "{tensor.name}" has shape {list(tensor.shape)}; expected {wanted}'
        )
    count = tensor.shape[0]
    if not 1 <= count <= max_instances:
        raise RequestError(
            422, f'input "{tensor.name}" has {count} rows; send 1 to {max_instances} per request'
        )
    rows = tensor.data.reshape(count, -1).tolist()
    if tensor.datatype == "BYTES":  # one string per row: a text, or a base64 image
        rows = [row[0] for row in rows]
    try:  # the schema's own value checks (finite numbers, token ids in range), one source
        return schema.parse(rows, max_instances=max_instances)
    except RequestError as error:
        message = str(error).replace("instances[", f"{tensor.name}[")
        raise RequestError(error.status_code, message) from None


def input_datatypes(schema: InputSchema) -> tuple[str, ...]:
    """Text models take strings (BYTES), image models numbers or base64 PNG/JPEG strings,
    token models integer ids, the others numbers."""
    if schema.spec.kind == "text":
        return ("BYTES",)
    if schema.tokens:
        return TOKEN_DATATYPES
    if schema.spec.kind == "image" and len(schema.shape) == 3:
        return (*DATATYPES, "BYTES")
    return tuple(DATATYPES)


def input_shapes(schema: InputSchema, datatype: str) -> list[tuple[int, ...]]:
    """Per-row shapes an input may have; -1 is any length up to the model's (token ids)."""
    if datatype == "BYTES":
        return [(), (1,)]  # [N] or [N, 1]: one string per row
    if schema.tokens:
        return [(-1,)]
    return schema.accepted_shapes()


def _fits(shape: tuple[int, ...], accepted: tuple[int, ...], schema: InputSchema) -> bool:
    if accepted == (-1,):  # token ids: any length up to the model's
        return len(shape) == 1 and 1 <= shape[0] <= schema.shape[0]
    return shape == accepted


def _shape_text(row_shape: tuple[int, ...], schema: InputSchema) -> str:
    if row_shape == (-1,):
        return f"[N, L] with L from 1 to {schema.shape[0]}"
    return "[" + ", ".join(["N", *map(str, row_shape)]) + "]"


# ---------------------------------------------------------------------- encoding


def output_tensors(answer: dict, requested: list[str]) -> list[dict]:
    """Predictor.response's body -> the v2 output tensors (dicts), those `requested` or all."""
    for name in requested:
        if name not in OUTPUTS:
            outputs = ", ".join(quote(o) for o in OUTPUTS)
            raise RequestError(422, f"unknown output {quote(name)}; outputs: {outputs}")
    labels, probabilities = answer["predictions"], answer["probabilities"]
    tensors = {
        "predictions": {"datatype": "BYTES", "shape": [len(labels)], "data": list(labels)},
        "probabilities": {
            "datatype": "FP32",
            "shape": [len(probabilities), len(probabilities[0]) if probabilities else 0],
            "data": [p for row in probabilities for p in row],
        },
    }
    return [{"name": name, **tensors[name]} for name in requested or OUTPUTS]


def infer_response_json(answer: dict, infer: InferRequest) -> dict:
    """The REST response body of POST /v2/models/NAME/infer."""
    return {
        "model_name": answer["model"],
        "model_version": str(answer["version"]),
        "id": infer.id,
        "outputs": output_tensors(answer, infer.outputs),
    }


def infer_response_grpc(answer: dict, infer: InferRequest) -> pb.ModelInferResponse:
    """The ModelInferResponse: the same tensors, BYTES in bytes_contents, FP32 in fp32_contents."""
    outputs = []
    for tensor in output_tensors(answer, infer.outputs):
        if tensor["datatype"] == "BYTES":
            contents = pb.InferTensorContents(bytes_contents=[s.encode() for s in tensor["data"]])
        else:
            contents = pb.InferTensorContents(fp32_contents=tensor["data"])
        outputs.append(
            pb.ModelInferResponse.InferOutputTensor(
                name=tensor["name"],
                datatype=tensor["datatype"],
                shape=tensor["shape"],
                contents=contents,
            )  # fmt: skip
        )
    return pb.ModelInferResponse(
        model_name=answer["model"], model_version=str(answer["version"]), id=infer.id,
        outputs=outputs,
    )  # fmt: skip


def model_metadata(*, name: str, version: int, schema: InputSchema) -> dict:
    """GET /v2/models/NAME and ModelMetadata: versions, the input and the outputs."""
    row = [-1] if schema.tokens else list(schema.shape)
    datatype = "INT64" if schema.tokens else "FP32"
    if schema.spec.kind == "text":  # one string per row
        row, datatype = [], "BYTES"
    return {
        "name": name,
        "versions": [str(version)],
        "platform": "raylane",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": datatype,
                "shape": [-1, *row],
            },
        ],  # fmt: skip
        "outputs": [
            {"name": "predictions", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(schema.class_names)]},
        ],  # fmt: skip
    }


def check_model(name: str, version: str, *, served: str, served_version: int) -> None:
    """A 404 unless `name` (and `version`, when given) is what this server serves."""
    if name != served:
        raise RequestError(
            404, f"no model {quote(name)} here; this server serves {quote(served)}: "
            f"POST /v2/models/{served}/infer",
        )  # fmt: skip
    if version and version != str(served_version):
        raise RequestError(
            404, f"{served} version {quote(version)} is not served here; it serves version "
            f"{served_version} (leave the version out to get it)",
        )  # fmt: skip


# HTTP status of a RequestError -> gRPC status code (never INTERNAL or UNKNOWN for a client's
# mistake: those say the server is at fault).
GRPC_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    if 400 <= status < 500:
        return GRPC_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
    return grpc.StatusCode.INTERNAL

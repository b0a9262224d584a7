"""int8 models as an ONNX graph plus safetensors: built by ONNX Runtime's quantizer, run by its
runtime, stored and loaded without unpickling anything.

    graph = export_graph(module, example)                        # float ONNX (protobuf bytes)
    int8 = quantize_graph(graph, scheme="dynamic")               # or "static", calibration=rows
    skeleton, tensors = split_graph(int8)                        # graph without data + tensors
    module = OnnxModule.load(skeleton, tensors, scheme="dynamic")  # an nn.Module again

Why ONNX Runtime: measured on this 2-core CPU (docs/performance.md), its int8 MLP ran a
batch of 32 in 0.11 ms against 0.91 ms for PyTorch's float model, 0.65 ms for torch.ao dynamic
quantization and 3.2 ms for torchao's int8 (no torch.compile); torch.ao's eager int8 kernels
barely beat float on these small layers.

Storage keeps the safetensors promise: the graph (protobuf, no code) is stored with its
initializers taken out, and every tensor it needs, int8 weights, their scales and zero points,
float biases, goes to safetensors. Loading puts them back by name, so a tensor missing from
the file (a scale deleted by hand) is named in one error, and a graph that carries tensors of
its own is refused. `scheme` is checked against the graph's operators: "dynamic" graphs
quantize activations at run time (DynamicQuantizeLinear), "static" ones carry calibrated
activation scales (QuantizeLinear/DequantizeLinear pairs).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cluster.errors import ConfigError, DataError, first_line

SCHEMES = ("dynamic", "static")
# Operators each scheme quantizes. Dynamic leaves Conv in float: ONNX Runtime's ConvInteger ran
# the digits CNN 3.8x slower than its float Conv here, while static QDQ Conv is int8 end to end.
DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention"]
DYNAMIC_MARKS = {"DynamicQuantizeLinear", "DynamicQuantizeLSTM"}  # quantize at run time
INT8_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "QuantizeLinear", "QAttention"}
QUANT_PARAMS = ("_scale", "_zero_point")  # suffixes ONNX Runtime gives quantization parameters
INPUT = "input"


def export_graph(module: nn.Module, example: torch.Tensor) -> bytes:
    """The float model as ONNX bytes, with a variable batch size. DataError if it cannot be
    exported (Python control flow the exporter cannot trace, an unsupported operator)."""
    module = module.eval()
    buffer = io.BytesIO()
    try:
        # Not under no_grad: with gradients on, nn.TransformerEncoderLayer skips its fused
        # fast path, an operator ONNX has no export for. dynamo=False: the TorchScript
        # exporter (deprecated since torch 2.9, still in the pinned 2.13) needs no onnxscript.
        with _quiet():
            torch.onnx.export(
                module, (example,), buffer, input_names=[INPUT], output_names=["logits"],
                dynamic_axes={INPUT: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            )  # fmt: skip
    except Exception as error:  # the exporter raises many types; the first line names the op
        raise DataError(
            f"cannot export the model to ONNX ({first_line(error)}); int8 needs a model the "
            "exporter can trace: the mlp, cnn and transformer families can"
        ) from None
    return buffer.getvalue()


def quantize_graph(graph: bytes, *, scheme: str, calibration: np.ndarray | None = None) -> bytes:
    """int8 ONNX bytes: weights per channel; activations at run time (dynamic) or with scales
    calibrated on `calibration` rows, model inputs (static)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    check_scheme(scheme)
    with tempfile.TemporaryDirectory(prefix="raylane-int8-") as tmp, _quiet():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        if scheme == "dynamic":
            quantize_dynamic(source, target, op_types_to_quantize=DYNAMIC_OPS, per_channel=True,
                             weight_type=QuantType.QInt8)  # fmt: skip
        else:
            batches = iter(
                [{INPUT: calibration[i : i + 64]} for i in range(0, len(calibration), 64)]
            )

            class Reader(CalibrationDataReader):
                def get_next(self):
                    return next(batches, None)

            quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8)  # fmt: skip
        return target.read_bytes()


def check_scheme(scheme: object) -> str:
    if scheme not in SCHEMES:
        raise ConfigError(f"quantization scheme {scheme!r} is unknown; use one of {SCHEMES}")
    return str(scheme)


def int8_operators(graph: bytes) -> list[str]:
    """The int8 operators in a graph: empty when nothing was quantized."""
    return [node.op_type for node in _parse(graph).graph.node if node.op_type in INT8_OPS]


def split_graph(graph: bytes) -> tuple[bytes, dict[str, torch.Tensor]]:
    """(the graph without its initializers, the initializers as tensors by name)."""
    from onnx import numpy_helper

    model = _parse(graph)
    tensors = {
        init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
        for init in model.graph.initializer
    }
    del model.graph.initializer[:]
    return model.SerializeToString(), tensors


def join_graph(skeleton: bytes, tensors: dict[str, torch.Tensor], *, scheme: str) -> bytes:
    """The runnable graph: `skeleton` with `tensors` put back, checked against `scheme`."""
    from onnx import numpy_helper
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = _parse(skeleton)
    if len(model.graph.initializer):
        raise DataError("the graph carries tensors of its own; they must come from safetensors")
    # A tensor "stored" in an outside file would make ONNX Runtime read any path it names.
    if any(uses_external_data(tensor) for tensor in _get_all_tensors(model)):
        raise DataError("the graph refers to external data files; raylane never reads those")
    _check_marks(model, scheme)
    needed = _needed(model)
    missing = sorted(needed - set(tensors))
    if missing:
        raise DataError(
            f"the weights lack {len(missing)} tensor(s) the graph needs, e.g. {missing[0]!r}: "
            "the version is incomplete or was edited; register it again"
        )
    model.graph.initializer.extend(
        numpy_helper.from_array(tensors[name].numpy(), name) for name in sorted(needed)
    )
    return model.SerializeToString()


def parameter_count(shapes: dict[str, Sequence[int]]) -> int:
    """Weights and biases, not the scales and zero points that describe their quantization."""
    return sum(
        math.prod(shape) for name, shape in shapes.items() if not name.endswith(QUANT_PARAMS)
    )


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind nn.Module's call: float tensor in, logits out, so the
    Predictor, evaluation and comparisons use it like any model. CPU only."""

    def __init__(self, graph: bytes):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch would use here: Serve replicas and benchmarks set that.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime's Fail / InvalidGraph / ...
            raise DataError(f"ONNX Runtime refuses the graph: {first_line(error)}") from None
        # Kept as the state dict, so the module travels to Ray Data actors as tensors do
        # (workloads/inference.py) and is rebuilt there by checkpoint.model_from_state.
        self.register_buffer("graph", torch.frombuffer(bytearray(graph), dtype=torch.uint8))

    @classmethod
    def load(cls, skeleton: bytes, tensors: dict[str, torch.Tensor], *, scheme: str):
        return cls(join_graph(skeleton, tensors, scheme=scheme))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = self.session.run(None, {INPUT: features.detach().cpu().numpy()})
        return torch.from_numpy(outputs[0])


def _parse(graph: bytes):
    import onnx

    try:
        return onnx.load_model_from_string(graph)
    except Exception as error:  # DecodeError and friends: not an ONNX protobuf
        raise DataError(f"the graph is not a valid ONNX model: {first_line(error)}") from None


def _check_marks(model, scheme: str) -> None:
    """A dynamic graph quantizes at run time, a static one does not: refuse a mismatch."""
    check_scheme(scheme)
    ops = {node.op_type for node in model.graph.node}
    actual = "dynamic" if ops & DYNAMIC_MARKS else "static" if "QuantizeLinear" in ops else None
    if actual != scheme:
        raise DataError(
            f"meta.json names quantization scheme {scheme!r} but the graph is "
            f"{'not quantized' if actual is None else actual + ' int8'}: the version was edited; "
            "register it again"
        )


def _needed(model) -> set[str]:
    """Node inputs that neither a graph input nor a node produces: the initializers."""
    produced = {i.name for i in model.graph.input} | {""}
    produced |= {out for node in model.graph.node for out in node.output}
    return {name for node in model.graph.node for name in node.input} - produced


@contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs advice at WARNING on the root logger for every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)

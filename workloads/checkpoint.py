"""The checkpoint contract: a directory that rebuilds a model with no code guesswork.

    model.safetensors   weights (safetensors: loading never unpickles)
    meta.json           format version, model spec, input spec, config, epoch, metrics,
                        library versions; written last, so its presence marks a whole checkpoint
    train_state.pt      optional optimizer/scheduler/RNG state, loaded with weights_only=True
    model.onnx          int8 versions only (`raylane optimize quantize`): the ONNX graph, its
                        tensors in model.safetensors; meta.json's `quantization` names the scheme
    tokenizer.json      a text model's tokenizer (Hugging Face `tokenizers`), named in
                        meta.json's input.text.tokenizer_file

    meta = build_meta(spec=spec, input_spec=info.input_spec(), config=job, epoch=3, ...)
    save_checkpoint(directory, model=model, meta=meta, train_state=state)
    model, meta = load_model(directory, policy=CodePolicy.for_loading())
    upload_checkpoint(storage, directory, "runs/x/checkpoint-epoch-0003")   # meta.json last
    registry = open_registry(storage)          # a Registry that knows this contract

The same directory is what Ray Train reports, what the registry stores as a version, and what
Serve loads. This is the only module that names the files; everyone else asks it (`meta_key`,
`read_meta`, `load_weights`, ...). The input spec and the feature preparation that training and
serving share live here too, so a served model sees exactly the inputs it was trained on.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cluster.errors import DataError, RaylaneError
from cluster.registry import Registry, VersionLayout
from cluster.storage import Storage
from workloads.models import build_model
from workloads.trust import CodePolicy

FORMAT_VERSION = 1
WEIGHTS, META, TRAIN_STATE = "model.safetensors", "meta.json", "train_state.pt"
GRAPH = "model.onnx"  # an int8 version's graph (workloads/onnx_int8.py)
QUANTIZATION = "quantization"  # meta.json field of an int8 version: {"scheme", "runtime"}
TOKENIZER = "tokenizer.json"
LAYOUT = VersionLayout(required=(WEIGHTS, META), marker=META)


def open_registry(storage: Storage) -> Registry:
    """The model registry in `storage`, with versions laid out as checkpoints."""
    return Registry(storage, layout=LAYOUT)


def meta_key(checkpoint_key: str) -> str:
    """Storage key of a stored checkpoint's meta.json."""
    return f"{checkpoint_key.rstrip('/')}/{META}"


def upload_checkpoint(storage: Storage, directory: str | Path, key: str) -> None:
    """Copy a checkpoint directory to `key`, meta.json last: until it lands (every other file
    is up by then) a reader finds no checkpoint there. Returns once every file is up, so the
    local directory may be deleted afterwards and never while an upload still reads it."""
    storage.upload_dir(directory, key, last=(META,))


def delete_checkpoint(storage: Storage, key: str) -> None:
    """Delete a stored checkpoint, meta.json first, so no reader takes it while it goes."""
    storage.delete(meta_key(key))
    storage.delete(key)


# ---------------------------------------------------------------------- the input spec


@dataclass(frozen=True)
class InputSpec:
    """What one example is: the `input` section of meta.json.

    `shape`/`dtype` are the model input per example; `feature_columns` name the Parquet
    columns (several scalar columns: one feature each, in this order; one column: a list per
    row); `feature_types` their Parquet types (named scalar columns only), shown to clients
    who send records; `normalization` is the train split's mean/std, applied in
    `prepare_features`. `text` (kind "text": one string column, tokenized to `shape` [L]) holds
    max_length, truncation and, in memory, the tokenizer's JSON (on disk: tokenizer.json).
    """

    kind: str  # "image" | "tabular" | "tokens" | "text"
    shape: tuple[int, ...]
    dtype: str  # "float32" | "int64"
    class_names: tuple[str, ...]
    feature_columns: tuple[str, ...] = ("features",)
    label_column: str = "label"
    label_encoding: str = "index"  # "index": labels are 0..K-1; "names": str(label) in classes
    vocab_size: int | None = None
    normalization: dict | None = field(default=None, compare=False)
    feature_types: tuple[str, ...] | None = None
    text: dict | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, section: Any) -> InputSpec:
        """meta.json's `input` -> InputSpec, or DataError naming what is missing."""
        try:
            spec = cls(
                kind=str(section.get("kind", "tabular")),
                shape=tuple(int(size) for size in section["shape"]),
                dtype=str(np.dtype(section["dtype"])),
                class_names=tuple(str(name) for name in section["class_names"]),
                feature_columns=tuple(section.get("feature_columns") or ("features",)),
                label_column=str(section.get("label_column", "label")),
                label_encoding=str(section.get("label_encoding", "index")),
                vocab_size=section.get("vocab_size"),
                normalization=section.get("normalization"),
                feature_types=_strings(section.get("feature_types")),
                text=dict(section["text"]) if section.get("text") else None,
            )
        except (AttributeError, TypeError, KeyError, ValueError) as error:
            raise DataError(
                f"meta.json has no usable 'input' section ({type(error).__name__}: {error}); "
                "it needs shape, dtype and class_names: re-export the checkpoint"
            ) from None
        if spec.tokens and not spec.vocab_size:
            raise DataError("meta.json input: a token model needs input.vocab_size")
        return spec

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @property
    def tokens(self) -> bool:
        return self.kind == "tokens" or np.dtype(self.dtype).kind in "iu"

    @property
    def named_features(self) -> tuple[str, ...] | None:
        """The feature names, in order, when each feature is a named scalar column."""
        named = len(self.feature_columns) == self.size and not self.tokens
        return self.feature_columns if named else None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _strings(values: Any) -> tuple[str, ...] | None:
    return None if values is None else tuple(str(value) for value in values)


def stack_features(batch: dict[str, np.ndarray], columns: tuple[str, ...] | list[str]):
    """Columns of a batch -> one 2-D array of flat rows, columns in the spec's order; a column
    of raw values (strings, encoded images) stays a 1-D object array, one value per row."""
    if len(columns) == 1:
        values = batch[columns[0]]
        if is_raw(values):
            return np.asarray(values, dtype=object)
        if values.dtype != object:
            return values.reshape(len(values), -1)
        stacked = np.stack(values)
        if stacked.dtype == object:  # nested lists (image arrays) arrive as arrays of arrays
            stacked = np.asarray(stacked.tolist())
        return stacked.reshape(len(values), -1)
    return np.stack([batch[c] for c in columns], axis=1)


def is_raw(values: np.ndarray) -> bool:
    """Strings or bytes, one per row: decoded by `prepare_features`, not cast."""
    if values.dtype.kind in "US":
        return True
    return values.dtype == object and len(values) > 0 and isinstance(values[0], str | bytes)


def decode_raw(rows: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Raw rows -> flat numeric rows: texts into token ids, images (encoded, or arrays held
    as objects) into pixels. Numeric rows pass through."""
    from workloads import rawinputs

    if rows.dtype.kind not in "OUS":
        return rows
    if spec.kind == "text":
        return rawinputs.encode_texts(rows.tolist(), spec.text or {})
    return rawinputs.decode_images(rows, spec.shape)


def prepare_features(rows: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Flat rows -> model input: decode, cast, normalize, reshape. Training and serving both
    call it."""
    rows = decode_raw(rows, spec)
    x = rows.reshape(len(rows), -1).astype(np.dtype(spec.dtype), copy=False)
    if spec.normalization:
        mean = np.asarray(spec.normalization["mean"], np.float32)
        std = np.asarray(spec.normalization["std"], np.float32)
        x = (x - mean) / std
    return x.reshape(len(x), *spec.shape)


def encode_labels(labels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Label values -> class indices, as the spec's label_encoding says."""
    if spec.label_encoding == "index":
        return labels.astype(np.int64)
    index = {name: i for i, name in enumerate(spec.class_names)}
    return np.array([index[str(v)] for v in labels], dtype=np.int64)


# ---------------------------------------------------------------------- writing


def library_versions() -> dict[str, str]:
    import ray

    return {"torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version()}


def build_meta(
    *,
    spec: dict,
    input_spec: InputSpec,
    config: dict,
    run_name: str,
    data_fingerprint: str,
    data_uri: str,
    epoch: int,
    metrics: dict,
) -> dict[str, Any]:
    """The meta.json of a training checkpoint (format and library versions are added on save)."""
    return {
        "model": spec,
        "input": input_spec.to_dict(),
        "config": config,
        "run_name": run_name,
        "data_fingerprint": data_fingerprint,
        "data_uri": data_uri,
        "epoch": epoch,
        "metrics": metrics,
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP/compile wrappers, so weight names carry no 'module.' prefix."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write weights, optional train state, then meta.json (last: it marks completion).

    `weights` is a state dict gathered beforehand (a sharded model's); default: the model's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = unwrap(model).state_dict() if weights is None else weights
    weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(weights, str(directory / WEIGHTS), metadata={"format": "pt"})
    if train_state is not None:
        torch.save(train_state, directory / TRAIN_STATE)
    return _write_meta(directory, meta)


def save_quantized(
    directory: str | Path, *, graph: bytes, tensors: dict[str, torch.Tensor], meta: dict
) -> Path:
    """Write an int8 version: the graph without its tensors, the tensors as safetensors, then
    meta.json (which must name the scheme in meta["quantization"])."""
    from workloads.onnx_int8 import check_scheme

    check_scheme((meta.get(QUANTIZATION) or {}).get("scheme"))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS))
    (directory / GRAPH).write_bytes(graph)
    return _write_meta(directory, meta)


def _write_meta(directory: Path, meta: dict) -> Path:
    meta = _tokenizer_to_file(meta, directory)
    full_meta = {"format_version": FORMAT_VERSION, "versions": library_versions(), **meta}
    (directory / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str))
    return directory


# ---------------------------------------------------------------------- reading


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory} is not a complete checkpoint: {META} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object: re-export the checkpoint")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} has checkpoint format {version!r}; this raylane reads format "
            f"{FORMAT_VERSION}: re-export the checkpoint or upgrade raylane"
        )
    return _tokenizer_from_file(meta, Path(directory))


def _tokenizer_to_file(meta: dict, directory: Path) -> dict:
    """A text model's tokenizer goes to its own file, which meta.json names."""
    text = (meta.get("input") or {}).get("text")
    if not (text and text.get("tokenizer")):
        return meta
    (directory / TOKENIZER).write_text(text["tokenizer"])
    text = {k: v for k, v in text.items() if k != "tokenizer"} | {"tokenizer_file": TOKENIZER}
    return {**meta, "input": {**meta["input"], "text": text}}


def _tokenizer_from_file(meta: dict, directory: Path) -> dict:
    """meta with the tokenizer that meta.json names read back into input.text.tokenizer."""
    text = (meta.get("input") or {}).get("text") if isinstance(meta.get("input"), dict) else None
    if not (isinstance(text, dict) and text.get("tokenizer_file")):
        return meta
    path = directory / TOKENIZER
    try:
        text["tokenizer"] = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is missing or unreadable ({type(error).__name__}), but {META} names it: "
            "register the version again from a complete checkpoint"
        ) from None
    return meta


def input_spec_of(meta: dict) -> InputSpec:
    return InputSpec.from_dict(meta.get("input"))


def load_weights(directory: str | Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory, as a state dict (never unpickled). A missing,
    truncated or hostile file (a huge or garbage header) is one DataError, not a traceback."""
    path = Path(directory) / WEIGHTS
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise DataError(f"{path} is missing: the checkpoint is incomplete") from None
    except Exception as error:  # SafetensorError, OSError, ...: the file is not what it claims
        raise DataError(
            f"{path} is corrupt or not a safetensors file ({_reason(error)}); register the "
            "version again from a good checkpoint"
        ) from None


def load_model(
    directory: str | Path, *, policy: CodePolicy, device: str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from meta.json and load its weights; returns (model in eval mode, meta).

    `policy` (workloads/trust.py) decides whether a custom class named in meta.json may be
    imported; it is checked before any import.
    """
    meta = read_meta(directory)
    if QUANTIZATION in meta:  # an int8 graph: no model code to build, nothing to import
        return _load_quantized(directory, meta, device=device), meta
    model = build_model(meta.get("model"), policy=policy)
    weights = load_weights(directory, device=device)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # shapes that do not fit
        raise DataError(
            f"weights in {directory} do not fit the model in {META}: {_reason(error)}"
        ) from None
    if missing or unexpected:
        raise DataError(
            f"weights in {directory} do not fit the model in {META}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), meta


def _load_quantized(directory: str | Path, meta: dict, *, device: str) -> torch.nn.Module:
    """An int8 version as an ONNX Runtime module; DataError naming the file when the graph, a
    tensor or the scheme does not fit."""
    from workloads.onnx_int8 import OnnxModule

    if device != "cpu":
        raise DataError(f"{directory} is an int8 version, which runs on CPU only: use cpu")
    path = Path(directory) / GRAPH
    try:
        graph = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} is missing: the int8 checkpoint is incomplete") from None
    section = meta[QUANTIZATION]
    scheme = section.get("scheme") if isinstance(section, dict) else section
    try:
        return OnnxModule.load(graph, load_weights(directory), scheme=scheme).eval()
    except RaylaneError as error:
        raise DataError(f"{path} does not load: {error}") from None


def model_from_state(meta: dict, state: dict, *, policy: CodePolicy) -> torch.nn.Module:
    """A loaded model rebuilt in another process from its meta and `module.state_dict()`."""
    if QUANTIZATION in meta:
        from workloads.onnx_int8 import OnnxModule

        return OnnxModule(state["graph"].numpy().tobytes()).eval()
    module = build_model(meta["model"], policy=policy)
    module.load_state_dict(state)
    return module.eval()


def model_footprint(directory: str | Path) -> dict[str, int]:
    """{"parameters", "bytes"}: stored weights (not quantization scales) and the bytes of the
    model's files (weights and graph; not meta.json or training state)."""
    from safetensors import safe_open

    from workloads.onnx_int8 import parameter_count

    files = [Path(directory) / name for name in (WEIGHTS, GRAPH)]
    size = sum(path.stat().st_size for path in files if path.exists())
    # The header's shapes only: load_model has just read the tensors themselves.
    with safe_open(str(files[0]), framework="pt") as weights:
        shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    return {"parameters": parameter_count(shapes), "bytes": size}


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    """Optimizer/scheduler/RNG state, or None. Loaded with weights_only=True: a file holding
    anything but tensors and plain containers is refused, and never unpickled."""
    path = Path(directory) / TRAIN_STATE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for foreign objects, EOFError, ...
        raise DataError(
            f"{path} is corrupt or holds objects other than tensors ({_reason(error)}); it "
            f"was not loaded. Delete {TRAIN_STATE} to resume from the weights alone, or start "
            "the run under a new name"
        ) from None


def _reason(error: BaseException) -> str:
    """The first line of an error, without advice meant for someone else (torch's message
    about weights_only=False suggests unpickling, which raylane never does)."""
    if "weights_only" in str(error):
        return f"{type(error).__name__}: it holds objects that only an unpickler could load"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:160]}"

"""The edge of the HTTP API: request/response models and input validation.

    schema = InputSchema(spec)                   # spec: the checkpoint's InputSpec
    rows = schema.parse(extract_instances(parse_json_body(body)), max_instances=256)

Pure: no Ray, no torch. Everything a client can get wrong is caught here, before a request
reaches a batch, so one bad request can never fail the requests batched with it.

What an instance may look like, for a model whose per-instance shape is S (the input spec's
`shape`, e.g. [1, 8, 8] for digits):
- float features (images, tables): a flat list of prod(S) numbers, nested lists of exactly S,
  or nested lists of S without its leading 1s ([8][8] for [1, 8, 8]). Numbers must be finite
  and within float32 range; booleans, strings and null are refused. Instances may mix forms.
- token ids (`kind: tokens`, S = [L]): a list of 1..L integers in [0, vocab_size); shorter
  lists are padded with 0 (the padding id the Transformer masks out) at the end.
- named features (a model trained on several named scalar Parquet columns): also a record, an
  object with exactly the feature names as keys in any order, e.g. {"alcohol": 13.2, ...}.
  Records and lists may be mixed; a missing or unknown key is named in the 422.
- text (`kind: text`): a string, tokenized here with the model's own tokenizer (the one fitted
  on its training split), so a bad one is refused before it joins a batch.
- images (`kind: image`): nested lists as above, or a base64 PNG/JPEG string (a `data:` URL
  too) of the model's width x height, decoded here (grayscale or RGB as the model's channels).
Raw values are sent: the checkpoint's normalization is applied by the Predictor, exactly as in
training.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cluster.errors import DataError
from workloads.checkpoint import InputSpec
from workloads.rawinputs import decode_image, encode_texts, text_problem

FLOAT32_MAX = float(np.finfo(np.float32).max)
BODY_FORM = '{"instances": [instance, ...]}'


class RequestError(DataError):
    """A request the server refuses: `status_code` is the HTTP status, the message the reason."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


# ---------------------------------------------------------------------- wire models (OpenAPI)


class PredictRequest(BaseModel):
    instances: list[Any] = Field(
        description="Instances to classify: each a flat list of numbers, nested lists of the "
        "model's input shape, a record {feature name: number} (models trained on named "
        "columns), a string (text models), a base64 PNG/JPEG (image models), or (token models) "
        "a list of token ids. See GET /v1/models/NAME.",
        examples=[[[0.0] * 64]],
    )


class PredictResponse(BaseModel):
    predictions: list[str] = Field(description="the most likely class name per instance")
    probabilities: list[list[float]] = Field(description="class probabilities per instance")
    model: str
    version: int = Field(description="the registry version that produced these predictions")


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong with the request and what was expected")


# ---------------------------------------------------------------------- request bodies


def parse_json_body(body: bytes) -> Any:
    """Bytes -> JSON value, or a 400 that says where the JSON broke."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, f"the body is not UTF-8 text; send JSON {BODY_FORM}") from None
    if not text.strip():
        raise RequestError(400, f"the body is empty; send JSON {BODY_FORM}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(
            400,
            f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}; "
            f"send JSON {BODY_FORM}",
        ) from None
    except RecursionError:
        raise RequestError(400, "the JSON is nested too deeply to be a list of instances") from None
    except ValueError:  # Python refuses integers of more than 4300 digits (CVE-2020-10735)
        raise RequestError(
            400, "a number in the body has thousands of digits; expected numbers a float can hold"
        ) from None


def extract_instances(payload: Any, *, allow_bare_list: bool = False) -> list:
    """The `instances` list of a request body (a bare list too, where allowed)."""
    if allow_bare_list and isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body is {_json_type(payload)}; expected {BODY_FORM}")
    unknown = sorted(set(payload) - {"instances"})
    if unknown:
        shown = ", ".join(quote(key) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise RequestError(422, f"unknown field(s) {shown}{more}; expected {BODY_FORM}")
    if "instances" not in payload:
        raise RequestError(422, f'the field "instances" is missing; expected {BODY_FORM}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            422, f'"instances" is {_json_type(instances)}; expected a list of instances'
        )
    return instances


# ---------------------------------------------------------------------- input schema


@dataclass(frozen=True)
class InputSchema:
    """What one instance must look like: a checkpoint's InputSpec, read as a request validator."""

    spec: InputSpec

    @classmethod
    def from_meta(cls, meta: dict) -> InputSchema:
        from workloads.checkpoint import input_spec_of

        return cls(input_spec_of(meta))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.spec.shape

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def vocab_size(self) -> int | None:
        return self.spec.vocab_size

    @property
    def tokens(self) -> bool:
        return self.spec.tokens

    @property
    def size(self) -> int:
        return self.spec.size

    def accepted_shapes(self) -> list[tuple[int, ...]]:
        """Per-instance shapes accepted for float inputs: S, S without leading 1s, flat."""
        squeezed = self.shape
        while len(squeezed) > 1 and squeezed[0] == 1:
            squeezed = squeezed[1:]
        return list(dict.fromkeys([self.shape, squeezed, (self.size,)]))

    def expected(self) -> str:
        """One phrase that says what an instance must be; ends every validation error."""
        if self.spec.kind == "text":
            cut = "end" if (self.spec.text or {}).get("truncation") != "left" else "beginning"
            return (
                f"expected a non-empty string (tokenized to at most {self.shape[0]} tokens; "
                f"a longer text loses its {cut})"
            )
        if self.tokens:
            return (
                f"expected a list of 1 to {self.shape[0]} integer token ids in "
                f"[0, {self.vocab_size}) (shorter lists are padded with 0)"
            )
        nested = " or ".join(_shape_text(shape) for shape in self.accepted_shapes()[:-1])
        if self.spec.named_features:
            return (
                f"expected a list of {self.size} numbers or a record with the keys "
                f"{_quote_keys(self.spec.named_features)} in any order"
            )
        if not nested:  # a flat schema such as [30]: the flat list is the only form
            return f"expected a list of {self.size} numbers"
        image = ""
        if self.spec.kind == "image" and len(self.shape) == 3:
            color = "grayscale" if self.shape[0] == 1 else "RGB"
            image = f", or a base64 PNG/JPEG of {self.shape[2]}x{self.shape[1]} pixels ({color})"
        return (
            f"expected a flat list of {self.size} numbers or nested lists of shape {nested}" + image
        )

    def describe(self) -> dict:
        described = {
            "kind": self.spec.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "classes": list(self.class_names),
            "vocab_size": self.vocab_size,
            "accepts": self.expected().removeprefix("expected "),
        }
        if self.spec.kind == "text":
            text = self.spec.text or {}
            described["text"] = {
                "max_length": self.shape[0],
                "truncation": text.get("truncation", "right"),
                "tokenizer": "BPE subwords, fitted on the training split; sent with the model",
            }
        if self.spec.named_features:
            types = self.spec.feature_types or (self.dtype,) * self.size
            described["features"] = [
                {"name": name, "type": type_}
                for name, type_ in zip(self.spec.named_features, types, strict=True)
            ]
        return described

    def parse(self, instances: list, *, max_instances: int) -> np.ndarray:
        """Validated instances -> raw rows (n, prod(shape)) in the schema's dtype."""
        if not instances:
            raise RequestError(422, f'"instances" is empty; send 1 to {max_instances} instances')
        if len(instances) > max_instances:
            raise RequestError(
                422,
                f"{len(instances)} instances in one request; at most {max_instances} are "
                "accepted: split the request",
            )
        if self.spec.kind == "text":
            return self._text_rows(instances)
        if self.tokens:
            return np.stack([self._token_row(inst, i) for i, inst in enumerate(instances)])
        if self.spec.named_features and any(isinstance(inst, dict) for inst in instances):
            instances = [self._record_row(inst, i) for i, inst in enumerate(instances)]
        images = self.spec.kind == "image" and len(self.shape) == 3
        rows = np.stack(
            [
                self._image_row(inst, i)
                if images and isinstance(inst, str)
                else self._float_row(inst, i)
                for i, inst in enumerate(instances)
            ]  # fmt: skip
        )
        return self._check_finite(rows)

    # ------------------------------------------------------------------ float features

    def _float_row(self, instance: Any, index: int) -> np.ndarray:
        """One instance -> a flat float64 row. Checked in plain Python, no deeper than the
        schema: numpy, given lists nested deeper than its 32-64 dimensions or ragged in odd
        ways, raises RuntimeError or ValueError, which were 500s."""
        where = f"instances[{index}]"
        if not isinstance(instance, list):
            raise RequestError(422, f"{where} is {_json_type(instance)}; {self.expected()}")
        max_ndim = max(len(shape) for shape in self.accepted_shapes())
        grid = _regular_grid(instance, max_ndim=max_ndim)
        if grid is None:
            raise RequestError(
                422, f"{where} is ragged (nested lists of unequal lengths); {self.expected()}"
            )
        shape, leaves = grid
        if len(shape) > max_ndim:
            raise RequestError(
                422, f"{where} is nested more than {max_ndim} lists deep; {self.expected()}"
            )
        for flat, value in enumerate(leaves):
            if type(value) not in (int, float):  # bools and strings are not numbers here
                path = "".join(f"[{int(i)}]" for i in np.unravel_index(flat, shape))
                raise RequestError(422, f"{where}{path} is {_json_type(value)}; {self.expected()}")
        if shape not in self.accepted_shapes():
            raise RequestError(422, f"{where} has shape {_shape_text(shape)}; {self.expected()}")
        try:
            return np.array(leaves, dtype=np.float64)
        except OverflowError:  # an integer beyond float64, e.g. 10**400
            raise RequestError(
                422, f"{where} holds an integer too large for a float; expected finite numbers"
            ) from None

    def _record_row(self, instance: Any, index: int) -> Any:
        """A record {name: number} -> the list of its values in the features' order."""
        if not isinstance(instance, dict):
            return instance  # a list: validated with the other float instances
        names, where = self.spec.named_features, f"instances[{index}]"
        missing = [name for name in names if name not in instance]
        unknown = [key for key in instance if key not in set(names)]
        if missing or unknown:
            problems = [f"lacks {_quote_keys(missing)}"] if missing else []
            problems += [f"has unknown key(s) {_quote_keys(unknown)}"] if unknown else []
            raise RequestError(422, f"{where} {' and '.join(problems)}; {self.expected()}")
        for name in names:
            if type(instance[name]) not in (int, float):
                what = _json_type(instance[name])
                raise RequestError(422, f"{where}[{quote(name)}] is {what}; expected a number")
        return [instance[name] for name in names]

    def _check_finite(self, rows: np.ndarray) -> np.ndarray:
        finite = np.isfinite(rows) & (np.abs(rows) <= FLOAT32_MAX)
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise RequestError(
                422,
                f"instances[{row}] holds {_number_text(rows[row, column])} at flat position "
                f"{column}; expected finite numbers within float32 range (no NaN or infinity)",
            )
        return rows.astype(np.float32)

    # ------------------------------------------------------------------ text and images

    def _text_rows(self, instances: list) -> np.ndarray:
        """Strings -> token ids with the model's tokenizer (so tokenizing never fails a batch)."""
        for index, instance in enumerate(instances):
            problem = text_problem(instance)
            if problem:
                what = problem if isinstance(instance, str) else _json_type(instance)
                raise RequestError(422, f"instances[{index}] is {what}; {self.expected()}")
        return encode_texts(instances, self.spec.text or {})

    def _image_row(self, instance: str, index: int) -> np.ndarray:
        """A base64 PNG/JPEG (or a data: URL of one) -> flat pixels of the model's shape."""
        where = f"instances[{index}]"
        encoded = instance.partition(",")[2] if instance.startswith("data:") else instance
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):  # ValueError: characters beyond ASCII
            raise RequestError(
                422, f"{where} is a string but not valid base64; {self.expected()}"
            ) from None
        try:
            return decode_image(data, self.shape)
        except ValueError as error:
            raise RequestError(422, f"{where} {error}; {self.expected()}") from None

    # ------------------------------------------------------------------ token ids

    def _token_row(self, instance: Any, index: int) -> np.ndarray:
        where, length = f"instances[{index}]", self.shape[0]
        if not isinstance(instance, list) or not instance:
            what = "empty" if isinstance(instance, list) else _json_type(instance)
            raise RequestError(422, f"{where} is {what}; {self.expected()}")
        if len(instance) > length:
            raise RequestError(422, f"{where} has {len(instance)} tokens; {self.expected()}")
        for position, token in enumerate(instance):
            if type(token) is not int or not 0 <= token < self.vocab_size:
                what = _json_type(token) if type(token) is not int else f"token id {token}"
                raise RequestError(422, f"{where}[{position}] is {what}; {self.expected()}")
        row = np.zeros(length, dtype=np.int64)
        row[: len(instance)] = instance
        return row


def _regular_grid(value: list, *, max_ndim: int) -> tuple[tuple[int, ...], list] | None:
    """(shape, leaves in row-major order) of nested lists, looked at one level at a time and
    at most `max_ndim` + 1 levels deep (a deeper shape is cut there); None when ragged: lists
    of unequal lengths, or lists beside non-lists at one level."""
    shape: list[int] = []
    level = [value]
    while level and type(level[0]) is list and len(shape) <= max_ndim:
        if any(type(node) is not list or len(node) != len(level[0]) for node in level):
            return None
        shape.append(len(level[0]))
        level = [item for node in level for item in node]
    if len(shape) <= max_ndim and any(type(node) is list for node in level):
        return None
    return tuple(shape), level


def quote(value: Any, width: int = 40) -> str:
    """A client's value inside an error message, clipped: an error never echoes a whole body."""
    text = json.dumps(value) if not isinstance(value, str) else json.dumps(value[: width + 1])
    return text if len(text) <= width else text[: width - 3] + '..."'


JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")


def check_content_type(header: str | None) -> None:
    """Bodies are JSON. No Content-Type, a JSON type (`application/json`, `*/*+json`) and curl's
    default for `-d` (form-urlencoded) are read as JSON; a body that says it is something else
    (text/plain, XML, multipart, ...) is refused with 415 rather than guessed at."""
    media = (header or "").split(";")[0].strip().lower()
    if not media or media in JSON_TYPES or media.endswith("+json"):
        return
    raise RequestError(
        415, f"Content-Type {quote(media)} is not JSON; send Content-Type: application/json"
    )


def _quote_keys(keys, shown: int = 8) -> str:
    """Keys named in an error: quoted and clipped, at most `shown` of them."""
    keys = list(keys)
    text = ", ".join(quote(str(key)) for key in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _json_type(value: Any) -> str:
    """A value described in JSON's words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {quote(value, 32)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {_number_text(value)}"
    return type(value).__name__


def _number_text(value: float) -> str:
    """A number for a message: a 4000-digit integer is shown by its first digits."""
    text = str(value)
    return text if len(text) <= 32 else f"{text[:24]}... ({len(text)} digits)"

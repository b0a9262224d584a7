"""Every request body a client can send gets an answer, never a crash: property tests of the
whole request path in-process (bytes -> JSON -> instances -> rows -> model -> JSON response).

    pytest tests/unit/test_request_fuzz.py          # a few thousand bodies per model

The property: the path either answers with a JSON body or raises a RequestError whose status
is a 4xx and whose message says what is wrong; any other exception would be a 500 in
serve/app.py. Bodies are arbitrary bytes, arbitrary JSON, and JSON shaped like the model's
input with arbitrary leaves, depths and sizes (the cases that once answered 500: lists nested
deeper than the schema, and integers with thousands of digits).
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import digits_checkpoint, tokens_checkpoint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve.predictor import Predictor
from serve.schemas import RequestError, extract_instances, parse_json_body
from workloads.trust import CodePolicy

MAX_INSTANCES = 8


@pytest.fixture(scope="module")
def predictors(tmp_path_factory) -> dict[str, Predictor]:
    root = tmp_path_factory.mktemp("fuzz")
    checkpoints = {
        "mlp": digits_checkpoint(root / "mlp", seed=1, steps=5),
        # GroupNorm turns float32-range inputs into NaN: a 500 before responses were checked.
        "cnn": digits_checkpoint(root / "cnn", seed=1, steps=2, family="cnn"),
        "tokens": tokens_checkpoint(root / "tokens"),
    }
    return {  # the checkpoints are the test's own: their code may be trusted
        kind: Predictor.from_checkpoint(path, name=kind, version=1, policy=CodePolicy.CONFIGURED)
        for kind, path in checkpoints.items()
    }


def answer(predictor: Predictor, body: bytes) -> tuple[int, bytes]:
    """What serve/app.py answers for `body`, as (status, JSON bytes), minus HTTP itself."""
    try:
        instances = extract_instances(parse_json_body(body))
        rows = predictor.schema.parse(instances, max_instances=MAX_INSTANCES)
        status, reply = 200, predictor.response(predictor.predict(rows))
    except RequestError as error:
        assert 400 <= error.status_code < 500, error.status_code
        assert str(error).strip(), "an error must say what is wrong"
        status, reply = error.status_code, {"error": str(error)}
    # As Starlette's JSONResponse renders it: NaN or a lone surrogate would fail right here.
    return status, json.dumps(reply, ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------------- bodies


def numbers() -> st.SearchStrategy:
    """JSON numbers of every kind, as text: small, huge, long, NaN and infinities."""
    return st.one_of(
        st.integers(-20, 20).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(json_text),
        st.integers(300, 6000).map(lambda digits: "9" * digits),  # beyond int()'s 4300 digits
        st.integers(300, 400).map(lambda exp: f"1e{exp}"),  # beyond float64: infinity
        st.sampled_from(["-0", "1E-400", "true", "false", "null", '"7"', "{}", "[]"]),
    )


def json_text(value: object) -> str:
    return json.dumps(value)  # NaN and Infinity as Python's json writes (and reads) them


def grids(leaves: st.SearchStrategy) -> st.SearchStrategy:
    """Nested lists with about the sizes of the models' inputs (8, 64) and other sizes."""
    sizes = st.sampled_from([0, 1, 2, 3, 7, 8, 9, 30, 63, 64, 65])
    return st.recursive(
        leaves,
        lambda inner: (
            st.builds(lambda n, item: "[" + ",".join([item] * n) + "]", sizes, inner)
            | st.lists(inner, max_size=9).map(lambda items: "[" + ",".join(items) + "]")
        ),
        max_leaves=80,
    )


def deep(leaves: st.SearchStrategy) -> st.SearchStrategy:
    """A leaf under up to 100,000 levels of lists (numpy allows 64, Python recursion ~1000)."""
    depth = st.integers(1, 100) | st.sampled_from([63, 64, 65, 900, 1000, 5000, 100_000])
    return st.builds(lambda d, leaf: "[" * d + leaf + "]" * d, depth, leaves)


def wide() -> st.SearchStrategy:
    """Many instances, each nested deeper than the schema (the '64-900 lists' case)."""
    return st.builds(
        lambda n, d: "[" + ",".join(["[" * d + "1" + "]" * d] * n) + "]",
        st.integers(1, 900),
        st.integers(1, 70),
    )


def json_values() -> st.SearchStrategy:
    """Arbitrary JSON, as text."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=40,
    )
    return values.map(json_text)


def fitting() -> st.SearchStrategy:
    """Instances that fit the models (64 float32-range numbers, token ids): these reach the
    network, whose outputs must still make a JSON answer."""
    extreme = st.floats(width=32, allow_nan=False, allow_infinity=False)
    pixels = st.lists(st.floats(-100, 100) | extreme, min_size=64, max_size=64)
    token_ids = st.lists(st.integers(0, 15), min_size=1, max_size=8)
    batches = [st.lists(kind, min_size=1, max_size=MAX_INSTANCES) for kind in (pixels, token_ids)]
    return st.one_of(batches).map(json_text)


def instances_fields() -> st.SearchStrategy:
    leaves = numbers()
    return st.one_of(grids(leaves), deep(leaves), wide(), json_values(), fitting())


def bodies() -> st.SearchStrategy:
    """Request bodies: mostly {"instances": ...}, also other objects, JSON and raw bytes."""
    wrapped = instances_fields().map(lambda field: '{"instances": ' + field + "}")
    other = json_values() | instances_fields()
    texts = st.one_of(wrapped, wrapped, wrapped, other).map(lambda text: text.encode())
    return st.one_of(texts, texts, texts, st.binary(max_size=200))


FUZZ = settings(
    max_examples=600,
    deadline=None,
    # one_thread holds for the whole test, so sharing it between examples is intended.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "tokens"])
@FUZZ
@given(body=bodies())
def test_any_body_gets_a_json_answer_or_a_4xx_that_says_why(predictors, one_thread, kind, body):
    status, reply = answer(predictors[kind], body)
    event(f"status {status}")  # pytest --hypothesis-show-statistics shows the mix
    assert status == 200 or 400 <= status < 500
    if status == 200:
        probabilities = json.loads(reply)["probabilities"]
        assert all(math.isclose(sum(row), 1.0, rel_tol=1e-4) for row in probabilities)

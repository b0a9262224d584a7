"""Hypothesis strategies for request bodies, shared by the in-process fuzz test
(tests/unit/test_request_fuzz.py) and the one over HTTP (tests/integration/test_serve.py).

    from request_bodies import bodies
    @given(body=bodies())          # bytes: mostly {"instances": ...}, also any JSON, any bytes

Bodies are arbitrary bytes, arbitrary JSON, and JSON shaped like the test models' inputs (64
pixels, 1-8 token ids below 16, records of FEATURES, texts, base64 images of any size or none)
with arbitrary leaves, depths, keys and sizes: the cases that once answered 500 were lists nested deeper than the schema, integers with
thousands of digits and float32-range pixels that drive a CNN to NaN.
"""

from __future__ import annotations

import base64
import io
import json

from hypothesis import strategies as st

MAX_INSTANCES = 8
FEATURES = ("alcohol", "ash", "hue")  # the columns of the named-feature (tabular) test model


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


def repeated(n: int, item: str) -> str:
    """`[item, item, ...]`, n times; nested repeats would grow as 65**depth (gigabytes), so an
    item that is already large is listed once."""
    return "[" + ",".join([item] * (n if len(item) * n <= 100_000 else 1)) + "]"


def grids(leaves: st.SearchStrategy) -> st.SearchStrategy:
    """Nested lists with about the sizes of the models' inputs (8, 64) and other sizes."""
    sizes = st.sampled_from([0, 1, 2, 3, 7, 8, 9, 30, 63, 64, 65])
    return st.recursive(
        leaves,
        lambda inner: (
            st.builds(repeated, sizes, inner)
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


def records() -> st.SearchStrategy:
    """Lists of objects keyed by the named features (or by other text), values of any kind."""

    def text(fields: dict) -> str:
        return "{" + ",".join(f"{json_text(key)}:{value}" for key, value in fields.items()) + "}"

    values = numbers() | grids(numbers())
    exact = st.fixed_dictionaries({name: values for name in FEATURES})
    any_keys = st.dictionaries(st.sampled_from(FEATURES) | st.text(max_size=6), values, max_size=5)
    instances = (exact | any_keys).map(text) | grids(numbers())
    return st.lists(instances, min_size=1, max_size=MAX_INSTANCES).map(lambda i: f"[{','.join(i)}]")


def fitting() -> st.SearchStrategy:
    """Instances that fit the models (64 pixels, token ids, records of the named features),
    with values up to float32's range: they reach the network, whose outputs must still make a
    JSON answer."""
    value = st.floats(-100, 100) | st.floats(width=32, allow_nan=False, allow_infinity=False)
    pixels = st.lists(value, min_size=64, max_size=64)
    token_ids = st.lists(st.integers(0, 15), min_size=1, max_size=8)
    rows = st.fixed_dictionaries({name: value for name in FEATURES})
    kinds = (pixels, token_ids, rows)
    return st.one_of([st.lists(kind, min_size=1, max_size=MAX_INSTANCES) for kind in kinds]).map(
        json_text
    )


def png(width: int, height: int, mode: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height), color=7 if mode == "L" else (7, 8, 9)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def strings() -> st.SearchStrategy:
    """Lists of strings, as text models and base64 images arrive: any text (lone surrogates
    too), base64 of any bytes, and PNGs of the right (8x8) and wrong sizes."""
    images = st.builds(png, st.integers(1, 12), st.integers(1, 12), st.sampled_from(["L", "RGB"]))
    texts = st.text(max_size=40).map(json_text) | st.sampled_from(['"\\ud800 a"', '""', '" "'])
    encoded = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | images
    instance = texts | encoded.map(json_text) | numbers()
    return st.lists(instance, min_size=1, max_size=MAX_INSTANCES).map(lambda i: f"[{','.join(i)}]")


def instances_fields() -> st.SearchStrategy:
    leaves = numbers()
    return st.one_of(
        grids(leaves), deep(leaves), wide(), json_values(), records(), fitting(), strings()
    )


def bodies() -> st.SearchStrategy:
    """Request bodies: mostly {"instances": ...}, also other objects, JSON and raw bytes."""
    wrapped = instances_fields().map(lambda field: '{"instances": ' + field + "}")
    other = json_values() | instances_fields()
    texts = st.one_of(wrapped, wrapped, wrapped, other).map(lambda text: text.encode())
    return st.one_of(texts, texts, texts, st.binary(max_size=200))


def v2_bodies() -> st.SearchStrategy:
    """Open Inference Protocol v2 bodies, {"inputs": [{"name", "shape", "datatype", "data"}]}:
    shapes that fit the models and any others, every datatype name, and as "data" the same
    nasty values as instances; also the v1 bodies (the wrong protocol for the route)."""
    shapes = st.sampled_from(["[1,64]", "[2,64]", "[1,1,8,8]", "[1,8]", "[2,3]", "[]"]) | st.lists(
        st.integers(-2, 70) | st.sampled_from([2**31, 2**63, 10**30]), max_size=5
    ).map(json_text)
    datatypes = st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BYTES", "BOOL", "fp32", ""])
    names = st.sampled_from(['"input"', '"x"', "7", "null"])
    tensor = st.builds(
        lambda name, shape, datatype, data: (
            f'{{"name": {name}, "shape": {shape}, "datatype": "{datatype}", "data": {data}}}'
        ),
        names, shapes, datatypes, instances_fields(),
    )  # fmt: skip
    value = st.floats(-100, 100) | st.floats(width=32, allow_nan=False, allow_infinity=False)
    fits = st.builds(  # [n, 64] pixels or [n, 3] token ids: they reach the network
        lambda n, width, datatype, data: json_text(
            {"name": "input", "shape": [n, width], "datatype": datatype,
             "data": data[: n * width] + [0] * (n * width - len(data))}
        ),
        st.integers(1, 4), st.sampled_from([64, 3, 1]), st.sampled_from(["FP32", "INT64", "BYTES"]),
        st.lists(value | st.integers(0, 15) | st.text(max_size=30), max_size=256),
    )  # fmt: skip
    tensor = tensor | fits
    wrapped = st.lists(tensor, min_size=0, max_size=2).map(
        lambda t: '{"inputs": [' + ",".join(t) + "]}"
    )
    fitting_body = fits.map(lambda t: '{"inputs": [' + t + "]}")
    texts = st.one_of(wrapped, wrapped, fitting_body, json_values()).map(lambda t: t.encode())
    return st.one_of(texts, texts, texts, bodies())

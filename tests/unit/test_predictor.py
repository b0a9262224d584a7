"""Predictor and request validation, without Ray: real checkpoints, a real (local) registry.

The digits models here are small MLPs fitted for a few full-batch steps on sklearn's digits, so
their predictions mean something; `digits_checkpoint` (tests/helpers.py) is also what the Serve
tests register.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from helpers import DIGITS_SHAPE, digits_checkpoint, digits_data, tokens_checkpoint

from cluster.errors import ConfigError, DataError
from cluster.registry import Registry
from serve import predictor as predictor_cli
from serve.config import ServeArgs, parse_dynamic
from serve.predictor import Predictor
from serve.schemas import InputSchema, RequestError, extract_instances, parse_json_body
from workloads.checkpoint import InputSpec, open_registry, prepare_features
from workloads.trust import CodePolicy

TRUSTED = CodePolicy.CONFIGURED  # the checkpoints here are the test's own


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Predictor:
    directory = digits_checkpoint(tmp_path_factory.mktemp("digits") / "ckpt", seed=1)
    return Predictor.from_checkpoint(directory, name="digits", version=1, policy=TRUSTED)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Predictor:
    directory = tokens_checkpoint(tmp_path_factory.mktemp("tokens") / "ckpt")
    return Predictor.from_checkpoint(directory, name="text", version=1, policy=TRUSTED)


# ---------------------------------------------------------------------- predictions


def test_predictions_match_the_model_and_are_accurate(digits):
    features, labels = digits_data()
    prediction = digits.predict(features)
    # The same numbers by hand: training's preprocessing, the network, a softmax.
    inputs = torch.as_tensor(prepare_features(features, InputSpec.from_dict(digits.meta["input"])))
    with torch.no_grad():
        expected = torch.softmax(digits.model(inputs), dim=1).numpy()
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(np.array(prediction.labels) == labels.astype(str))
    assert accuracy > 0.85


def test_every_accepted_instance_form_gives_the_same_answer(digits):
    features, _ = digits_data()
    flat = features[:3].tolist()
    nested = features[:3].reshape(3, 1, 8, 8).tolist()
    squeezed = features[:3].reshape(3, 8, 8).tolist()
    mixed = [flat[0], nested[1], squeezed[2]]
    answers = [
        digits.predict_instances(form, max_instances=8) for form in (flat, nested, squeezed, mixed)
    ]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["model"] == "digits" and answers[0]["version"] == 1
    assert len(answers[0]["probabilities"]) == 3 and len(answers[0]["probabilities"][0]) == 10
    ints = [[int(v) for v in row] for row in flat]  # JSON integers are numbers too
    assert digits.predict_instances(ints, max_instances=8) == answers[0]


def test_inputs_that_drive_a_model_to_nan_are_refused_not_answered(tmp_path):
    """Finite float32 inputs far from the data make a CNN's GroupNorm return NaN, and JSON has
    no NaN: the request is refused, not answered with a broken body (or a 500)."""
    directory = digits_checkpoint(tmp_path / "cnn", seed=1, steps=2, family="cnn")
    cnn = Predictor.from_checkpoint(directory, name="digits", version=1, policy=TRUSTED)
    features, _ = digits_data()
    with pytest.raises(RequestError, match="instances.1. drives the model to non-finite") as caught:
        cnn.predict_instances([features[0].tolist(), [3.4e38] * 64], max_instances=4)
    assert caught.value.status_code == 422


def test_token_instances_are_padded_with_zeros(tokens):
    short = tokens.predict_instances([[3, 4, 5]], max_instances=4)
    padded = tokens.predict_instances([[3, 4, 5, 0, 0, 0, 0, 0]], max_instances=4)
    assert short == padded
    assert tokens.describe()["input"]["vocab_size"] == 16


@pytest.mark.gpu
def test_predictions_on_cuda_agree_with_cpu(tmp_path):
    directory = digits_checkpoint(tmp_path / "ckpt", seed=1)
    cpu = Predictor.from_checkpoint(directory, name="digits", version=1, policy=TRUSTED)
    cuda = Predictor.from_checkpoint(
        directory, name="digits", version=1, policy=TRUSTED, device="cuda"
    )
    features, _ = digits_data()
    on_cpu, on_cuda = cpu.predict(features), cuda.predict(features)
    np.testing.assert_allclose(on_cuda.probabilities, on_cpu.probabilities, atol=1e-4)
    assert np.mean(np.array(on_cuda.labels) == np.array(on_cpu.labels)) > 0.99


def test_a_model_whose_outputs_do_not_match_its_classes_is_refused(tmp_path, digits):
    meta = json.loads(json.dumps(digits.meta))
    meta["input"]["class_names"] = ["only", "three", "names"]
    with pytest.raises(DataError, match="returns 10 outputs but its checkpoint names 3 classes"):
        Predictor(digits.model, meta, name="digits", version=1)


# ---------------------------------------------------------------------- bad instances

SIXTY_FOUR = [0.0] * 64
DIGITS_EXPECTED = "expected a flat list of 64 numbers or nested lists of shape [1, 8, 8]"

BAD_DIGITS = [
    ("empty", [], '"instances" is empty; send 1 to 4 instances'),
    ("too many", [SIXTY_FOUR] * 5, "5 instances in one request; at most 4"),
    ("not wrapped", [0.5, 1.5], "instances[0] is the number 0.5; " + DIGITS_EXPECTED),
    ("short", [[0.0] * 63], "instances[0] has shape [63]; " + DIGITS_EXPECTED),
    ("wrong nesting", [[[0.0] * 8] * 7], "instances[0] has shape [7, 8]; "),
    ("ragged", [[[0.0] * 8] * 7 + [[0.0] * 7]], "instances[0] is ragged"),
    ("string", [[*SIXTY_FOUR[:5], "7", *SIXTY_FOUR[6:]]], 'instances[0][5] is the string "7"'),
    ("null", [[None, *SIXTY_FOUR[1:]]], "instances[0][0] is null"),
    ("boolean", [SIXTY_FOUR, [True, *SIXTY_FOUR[1:]]], "instances[1][0] is the boolean true"),
    ("object", [{"pixels": SIXTY_FOUR}], "instances[0] is an object; " + DIGITS_EXPECTED),
    ("nan", [[math.nan, *SIXTY_FOUR[1:]]], "instances[0] holds nan at flat position 0"),
    (
        "infinity",
        [SIXTY_FOUR, [*SIXTY_FOUR[:9], -math.inf, *SIXTY_FOUR[10:]]],
        "instances[1] holds -inf at flat position 9",
    ),
    ("float32 overflow", [[1e39, *SIXTY_FOUR[1:]]], "within float32 range"),
    ("huge integer", [[10**400, *SIXTY_FOUR[1:]]], "integer too large"),
    ("deeper than the schema", [[[[[0.0]]]]], "instances[0] is nested more than 3 lists deep"),
    ("40 levels", [json.loads("[" * 40 + "]" * 40)], "nested more than 3 lists deep"),
    ("lists beside numbers", [[[0.0] * 8] * 7 + [0.0]], "instances[0] is ragged"),
]


@pytest.mark.parametrize(
    ("instances", "message"), [case[1:] for case in BAD_DIGITS], ids=[c[0] for c in BAD_DIGITS]
)
def test_bad_digit_instances_are_refused_with_what_was_expected(digits, instances, message):
    with pytest.raises(RequestError) as caught:
        digits.schema.parse(instances, max_instances=4)
    assert caught.value.status_code == 422
    assert message in str(caught.value)


BAD_TOKENS = [
    ("float", [[1, 2.0]], "instances[0][1] is the number 2.0"),
    ("out of vocabulary", [[1, 16]], "instances[0][1] is token id 16"),
    ("negative", [[-1]], "instances[0][0] is token id -1"),
    ("too long", [[1] * 9], "instances[0] has 9 tokens"),
    ("empty", [[]], "instances[0] is empty"),
    ("boolean", [[True]], "instances[0][0] is the boolean true"),
]


@pytest.mark.parametrize(
    ("instances", "message"), [case[1:] for case in BAD_TOKENS], ids=[c[0] for c in BAD_TOKENS]
)
def test_bad_token_instances_are_refused(tokens, instances, message):
    with pytest.raises(RequestError) as caught:
        tokens.schema.parse(instances, max_instances=4)
    assert caught.value.status_code == 422
    assert message in str(caught.value)
    assert "expected a list of 1 to 8 integer token ids in [0, 16)" in str(caught.value)


BAD_BODIES = [
    (b"", 400, "the body is empty"),
    (b'{"instances": [[1, 2]', 400, "malformed JSON: Expecting ',' delimiter at line 1"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[" * 100_000, 400, "nested too deeply"),
    (b'{"instances": [[' + b"9" * 5000 + b"]]}", 400, "a number in the body has thousands of"),
    (b"[[1, 2]]", 422, 'the body is a list; expected {"instances"'),
    (b'{"inputs": []}', 422, 'unknown field(s) "inputs"'),
    (b"{}", 422, 'the field "instances" is missing'),
    (b'{"instances": "0 1 2"}', 422, '"instances" is the string "0 1 2"; expected a list'),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_bad_bodies_are_refused(body, status, message):
    with pytest.raises(RequestError) as caught:
        extract_instances(parse_json_body(body))
    assert caught.value.status_code == status
    assert message in str(caught.value)


def test_a_bare_list_is_accepted_where_allowed():
    assert extract_instances(parse_json_body(b"[[1, 2]]"), allow_bare_list=True) == [[1, 2]]


def test_schema_describes_what_it_accepts(digits):
    described = digits.schema.describe()
    assert described["shape"] == DIGITS_SHAPE
    assert described["classes"] == [str(c) for c in range(10)]
    assert described["accepts"].endswith(
        "nested lists of shape [1, 8, 8] or [8, 8], or a base64 PNG/JPEG of 8x8 pixels (grayscale)"
    )
    with pytest.raises(DataError, match="no usable 'input' section"):
        InputSchema.from_meta({"model": {}})


# ---------------------------------------------------------------------- serving settings


def test_serve_args_are_validated_with_field_names():
    args = ServeArgs.parse({"model": "digits@production"})
    assert args.dynamic() == {
        "model": "digits@production",
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.002,
        "watch_interval_s": 10.0,
    }
    cases = [
        ({"max_batch_size": 64, "max_ongoing_requests": 8}, "max_ongoing_requests (8) must be >="),
        ({"model": "Digits!"}, "model: malformed model reference 'Digits!'"),
        ({"num_cpus": -1}, "num_cpus: Input should be greater than or equal to 0"),
        ({"max_batch_size": "many"}, "max_batch_size: Input should be a valid integer"),
        ({"autoscaling_config": {"min_replicas": 3, "max_replicas": 1}}, "max_replicas (1)"),
        ({"api_key_env": "MY KEY"}, "not an environment variable name"),
        ({"replicas": 2}, "replicas: unknown field; allowed here: api_key_env"),
    ]
    for update, message in cases:
        with pytest.raises(ConfigError, match="invalid serve args") as caught:
            ServeArgs.parse({"model": "digits@production", **update})
        assert message in str(caught.value)
    with pytest.raises(ConfigError, match="user_config: model: model versions start at 1"):
        parse_dynamic({"model": "digits:0"})
    assert parse_dynamic({"model": "digits:2"}).model_dump(exclude_none=True) == {
        "model": "digits:2"
    }


# ---------------------------------------------------------------------- registry + CLI


@pytest.fixture
def registry(local_storage, tmp_path) -> Registry:
    registry = open_registry(local_storage)
    for seed in (1, 2):
        directory = digits_checkpoint(tmp_path / f"v{seed}", seed=seed, steps=5 * seed)
        registry.register("digits", directory, lineage={"seed": seed})
    registry.promote("digits", "production", 1)
    return registry


def test_predictor_loads_a_registry_version_by_alias_or_number(registry):
    by_alias = Predictor.from_registry(registry, "digits@production")
    latest = Predictor.from_registry(registry, "digits")
    assert (by_alias.version, latest.version) == (1, 2)
    assert by_alias.describe()["run_name"] == "test-digits-1"
    features, _ = digits_data()
    assert by_alias.predict(features[:50]).labels != latest.predict(features[:50]).labels


def test_predict_cli_prints_the_http_response(registry, tmp_path, capsys, monkeypatch):
    features, _ = digits_data()
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"instances": features[:2].tolist()}))
    storage = registry.storage.uri
    assert (
        predictor_cli.main(
            ["--model", "digits@production", "--input", str(path), "--storage", storage]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    expected = Predictor.from_registry(registry, "digits:1").predict_instances(
        features[:2].tolist(), max_instances=2
    )
    assert printed == expected

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"[[1, 2, 3]]")))
    with pytest.raises(RequestError, match=r"instances\[0\] has shape \[3\]"):
        predictor_cli.main(["--model", "digits:2", "--input", "-", "--storage", storage])
    with pytest.raises(DataError, match="cannot read --input"):
        predictor_cli.main(["--model", "digits:2", "--input", str(tmp_path / "missing.json")])

"""Every request body a client can send gets an answer, never a crash: property tests of the
whole request path in-process (bytes -> JSON -> instances -> rows -> model -> JSON response).

    pytest tests/unit/test_request_fuzz.py     # 500 bodies for each of 5 models

The property: the path either answers with a JSON body or raises a RequestError whose status
is a 4xx and whose message says what is wrong; any other exception would be a 500 in
serve/app.py. The bodies are tests/request_bodies.py's.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import digits_checkpoint, tabular_checkpoint, text_checkpoint, tokens_checkpoint
from hypothesis import HealthCheck, event, given, settings
from request_bodies import FEATURES, MAX_INSTANCES, bodies, v2_bodies

from serve.predictor import Predictor
from serve.schemas import RequestError, extract_instances, parse_json_body
from serve.v2 import infer_request_from_json, infer_response_json, rows_from_inputs
from workloads.trust import CodePolicy


@pytest.fixture(scope="module")
def predictors(tmp_path_factory) -> dict[str, Predictor]:
    root = tmp_path_factory.mktemp("fuzz")
    checkpoints = {
        "mlp": digits_checkpoint(root / "mlp", seed=1, steps=5),
        # GroupNorm turns float32-range inputs into NaN: a 500 before responses were checked.
        "cnn": digits_checkpoint(root / "cnn", seed=1, steps=2, family="cnn"),
        "tokens": tokens_checkpoint(root / "tokens"),
        "records": tabular_checkpoint(root / "records", FEATURES, mean=[13, 2.4, 1], std=[1] * 3),
        "text": text_checkpoint(root / "text"),  # raw strings; the CNN takes base64 PNGs
    }
    return {  # the checkpoints are the test's own: their code may be trusted
        kind: Predictor.from_checkpoint(path, name=kind, version=1, policy=CodePolicy.CONFIGURED)
        for kind, path in checkpoints.items()
    }


def answer(predictor: Predictor, body: bytes, *, v2: bool = False) -> tuple[int, bytes]:
    """What serve/app.py answers for `body` (POST /v2/models/NAME/infer with `v2`), as
    (status, JSON bytes), minus HTTP itself."""
    try:
        if v2:
            infer = infer_request_from_json(parse_json_body(body))
            rows = rows_from_inputs(predictor.schema, infer.inputs, max_instances=MAX_INSTANCES)
            prediction = predictor.response(predictor.predict(rows))
            status, reply = 200, infer_response_json(prediction, infer)
        else:
            instances = extract_instances(parse_json_body(body))
            rows = predictor.schema.parse(instances, max_instances=MAX_INSTANCES)
            status, reply = 200, predictor.response(predictor.predict(rows))
    except RequestError as error:
        assert 400 <= error.status_code < 500, error.status_code
        assert str(error).strip(), "an error must say what is wrong"
        status, reply = error.status_code, {"error": str(error)}
    # As Starlette's JSONResponse renders it: NaN or a lone surrogate would fail right here.
    return status, json.dumps(reply, ensure_ascii=False, allow_nan=False).encode("utf-8")


FUZZ = settings(
    max_examples=500,
    deadline=None,
    # one_thread holds for the whole test, so sharing it between examples is intended.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "tokens", "records", "text"])
@FUZZ
@given(body=bodies())
def test_any_body_gets_a_json_answer_or_a_4xx_that_says_why(predictors, one_thread, kind, body):
    status, reply = answer(predictors[kind], body)
    event(f"status {status}")  # pytest --hypothesis-show-statistics shows the mix
    assert status == 200 or 400 <= status < 500
    if status == 200:
        probabilities = json.loads(reply)["probabilities"]
        assert all(math.isclose(sum(row), 1.0, rel_tol=1e-4) for row in probabilities)


@pytest.mark.parametrize("kind", ["cnn", "tokens", "text"])
@settings(FUZZ, max_examples=300)
@given(body=v2_bodies())
def test_any_v2_body_gets_a_json_answer_or_a_4xx_that_says_why(predictors, one_thread, kind, body):
    status, reply = answer(predictors[kind], body, v2=True)
    event(f"status {status}")
    assert status == 200 or 400 <= status < 500
    if status == 200:
        outputs = {t["name"]: t for t in json.loads(reply)["outputs"]}
        assert math.isclose(
            sum(outputs["probabilities"]["data"]), outputs["predictions"]["shape"][0], rel_tol=1e-4
        )

"""Ray Serve end to end: a real local Ray, real HTTP, two model versions in a real registry on
SeaweedFS. One Serve instance for the module: each test that needs the app as the fixture
made it (production -> 1, autoscaling 1-2 replicas) calls `served.reset()` first, so no test
depends on what another left behind.

The app autoscales 1-2 replicas with short delays, follows `digits@production` every 0.5 s,
requires an API key and limits bodies to 64 KiB, and Serve's gRPC proxy serves the Open
Inference Protocol v2 beside HTTP, so every behaviour is exercised on one setup.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import yaml
from conftest import TEST_BUCKET
from helpers import (
    ThreadedLoad,
    descendants,
    digits_checkpoint,
    digits_data,
    environment,
    is_loopback,
    listening_sockets,
    metric_sum,
    scrape_metrics,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from request_bodies import bodies

from cluster.registry import Registry
from cluster.s3server import free_port
from cluster.storage import Storage
from serve.predictor import Predictor
from workloads.checkpoint import open_registry

CONFIG_YAML = Path(__file__).parents[2] / "serve" / "config.yaml"
API_KEY_ENV, API_KEY = "RAYLANE_TEST_API_KEY", "test-key-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PREDICT = "/v1/models/digits:predict"
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 2,
    "look_back_period_s": 2,
    "metrics_interval_s": 0.5,  # how often the proxy reports queue lengths to the autoscaler
}


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def replica_environment():
    """Set before the module's Ray starts, so its replicas inherit them: the API key (as a
    deployment would get it from a secret) and a 1 s metrics export instead of 10 s."""
    with environment({API_KEY_ENV: API_KEY, "RAY_metrics_report_interval_ms": "1000"}):
        yield


@pytest.fixture(scope="module")
def registry(s3_server, tmp_path_factory) -> Registry:
    """`digits` versions 1 and 2 (different weights), production -> 1."""
    registry = open_registry(Storage(f"s3://{TEST_BUCKET}/serve-{uuid.uuid4().hex[:8]}"))
    root = tmp_path_factory.mktemp("serve-models")
    for seed in (1, 2):
        registry.register(
            "digits",
            digits_checkpoint(root / f"v{seed}", seed=seed, steps=8 * seed),
            lineage={"seed": seed},
        )
    registry.promote("digits", "production", 1)
    return registry


@dataclass
class Served:
    url: str
    registry: Registry
    expected: dict[int, list[dict]]  # version -> in-process answer per payload
    payloads: list[dict]
    args: dict  # the app's build_app args
    grpc_target: str  # host:port of Serve's gRPC proxy (Open Inference Protocol v2)

    def reset(self) -> None:
        """The app as the fixture deployed it, serving version 1, whatever a test changed."""
        from ray import serve as ray_serve

        from serve.app import APP_NAME, build_app

        self.registry.promote("digits", "production", 1)
        ray_serve.run(build_app(self.args), name=APP_NAME, route_prefix="/")
        with client(self) as http:
            wait_for(
                lambda: http.get("/v1/models/digits").json().get("version") == 1,
                timeout_s=30,
                what="the fixture's app serving version 1",
            )


@pytest.fixture(scope="module")
def served(ray_session, registry) -> Served:
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app
    from serve.grpc_proxy import serve_start_options

    port, grpc_port = free_port(), free_port()
    ray_serve.start(**serve_start_options(host="127.0.0.1", port=port, grpc_port=grpc_port))
    args = {
        "model": "digits@production",
        "storage": registry.storage.uri,
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.02,
        "max_ongoing_requests": 16,
        "num_cpus": 0.25,
        "api_key_env": API_KEY_ENV,
        "max_body_bytes": 65536,
        "max_instances": 16,
        "watch_interval_s": 0.5,
        "autoscaling_config": AUTOSCALING,
    }
    ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    features, _ = digits_data()
    payloads = [{"instances": features[i : i + 1 + i % 2].tolist()} for i in range(24)]
    expected = {}
    for version in (1, 2):
        predictor = Predictor.from_registry(registry, f"digits:{version}")
        expected[version] = [
            predictor.predict_instances(p["instances"], max_instances=16) for p in payloads
        ]
    url, grpc_target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    yield Served(url, registry, expected, payloads, args, grpc_target)
    ray_serve.shutdown()


def client(served: Served, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=served.url, headers=AUTH, timeout=15, **kwargs)


def same_answer(response: dict, expected: dict) -> bool:
    return response["predictions"] == expected["predictions"] and np.allclose(
        response["probabilities"], expected["probabilities"], rtol=1e-4, atol=1e-6
    )


@dataclass
class Outcome:
    at: float
    status: int  # 0: no HTTP answer (connection reset, timeout)
    version: int | None
    correct: bool
    attempts: int


class Load(ThreadedLoad):
    """`threads` clients POST payloads in a loop until stopped (at most `limit_s`)."""

    def __init__(self, served: Served, *, threads: int, retry: bool = False, limit_s: float = 25):
        super().__init__(threads)
        self.served, self.retry, self.limit_s = served, retry, limit_s
        self.outcomes: list[Outcome] = []

    def _run(self, worker: int) -> None:
        with client(self.served) as http:
            n = worker
            while not self._stop.is_set() and time.monotonic() - self.start < self.limit_s:
                n += self.threads
                self.outcomes.append(self._request(http, n % len(self.served.payloads)))

    def _request(self, http: httpx.Client, index: int) -> Outcome:
        for attempt in (1, 2):
            try:
                response = http.post(PREDICT, json=self.served.payloads[index])
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            if status == 200 or not self.retry or attempt == 2:
                break
        if status != 200:
            return Outcome(time.monotonic(), status, None, False, attempt)
        body = response.json()
        correct = same_answer(body, self.served.expected[body["version"]][index])
        return Outcome(time.monotonic(), status, body["version"], correct, attempt)


def replicas(state: str = "RUNNING") -> int:
    from ray import serve as ray_serve

    app = ray_serve.status().applications.get("raylane")
    return app.deployments["ModelServer"].replica_states.get(state, 0) if app else 0


# ---------------------------------------------------------------------- predictions over HTTP


@pytest.mark.integration
def test_http_predictions_equal_in_process_predictions(served):
    with client(served) as http:
        for index, payload in enumerate(served.payloads):
            response = http.post(PREDICT, json=payload)
            assert response.status_code == 200, response.text
            assert response.headers["x-model-version"] == "1"
            body = response.json()
            assert (body["model"], body["version"]) == ("digits", 1)
            assert same_answer(body, served.expected[1][index])
        info = http.get("/v1/models/digits").json()
        assert (info["version"], info["ref"]) == (1, "digits@production")
        assert info["input"]["shape"] == [1, 8, 8] and info["input"]["classes"][9] == "9"
        assert info["limits"] == {"max_instances": 16, "max_body_bytes": 65536}
        assert http.get("/healthz", headers={"Authorization": ""}).json()["status"] == "ok"
        assert PREDICT.replace("digits", "{name}") in http.get("/openapi.json").json()["paths"]
        assert http.get("/docs").status_code == 200


# ---------------------------------------------------------------------- Open Inference Protocol v2


def v2_tensor(instances: list, **changes) -> dict:
    rows = np.asarray(instances, dtype=np.float32)
    return {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
            "data": rows.ravel().tolist(), **changes}  # fmt: skip


# (case, the model name asked for, changes to the input tensor, REST status, gRPC code name)
BAD_TENSORS = [
    ("wrong shape", "digits", {"shape": [2, 32]}, 422, "INVALID_ARGUMENT"),
    ("wrong datatype", "digits", {"datatype": "BYTES"}, 422, "INVALID_ARGUMENT"),
    ("wrong size", "digits", {"shape": [2, 64]}, 422, "INVALID_ARGUMENT"),
    ("missing input", "digits", {"name": "pixels"}, 422, "INVALID_ARGUMENT"),
    ("unknown model", "nope", {}, 404, "NOT_FOUND"),
]


def grpc_infer_request(model: str, tensor: dict):
    from serve.proto import grpc_predict_v2_pb2 as pb

    fields = {key: tensor[key] for key in ("name", "shape", "datatype")}
    contents = pb.InferTensorContents(fp32_contents=tensor["data"])
    if tensor["datatype"] == "BYTES":
        contents = pb.InferTensorContents(bytes_contents=[b"x"] * len(tensor["data"]))
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(**fields, contents=contents)],
    )


def v2_answer(outputs) -> dict:
    """v2 output tensors (REST dicts or gRPC messages) -> v1's predictions and probabilities."""
    by_name = {
        t["name"] if isinstance(t, dict) else t.name: t for t in outputs
    }  # fmt: skip
    labels, probabilities = by_name["predictions"], by_name["probabilities"]
    if isinstance(labels, dict):
        data, shape = labels["data"], probabilities["shape"]
        return {"predictions": data, "probabilities": np.reshape(probabilities["data"], shape)}
    data = [b.decode() for b in labels.contents.bytes_contents]
    values = np.reshape(probabilities.contents.fp32_contents, list(probabilities.shape))
    return {"predictions": data, "probabilities": values}


@pytest.mark.integration
def test_grpc_and_rest_v2_answer_as_http_v1_and_refuse_bad_tensors(served):
    """A real grpcio client through Serve's gRPC proxy and REST v2 beside v1: the same
    predictions as v1 for the same rows, the version that answered, and the bad-tensor table
    refused with INVALID_ARGUMENT / NOT_FOUND and 4xx; no API key, UNAUTHENTICATED."""
    import grpc

    from serve.proto import grpc_predict_v2_pb2 as pb
    from serve.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    key = [("authorization", f"Bearer {API_KEY}")]
    with grpc.insecure_channel(served.grpc_target) as channel, client(served) as http:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=key).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), metadata=key)
        assert (metadata.versions, list(metadata.inputs[0].shape)) == (["1"], [-1, 1, 8, 8])
        assert http.get("/v2/health/ready", headers={}).json() == {"ready": True}
        assert http.get("/v2/models/digits").json()["versions"] == ["1"]
        for index, payload in enumerate(served.payloads[:6]):
            tensor = v2_tensor(payload["instances"])
            reply = stub.ModelInfer(grpc_infer_request("digits", tensor), metadata=key)
            assert reply.model_version == "1"
            assert same_answer(v2_answer(reply.outputs), served.expected[1][index])
            rest = http.post("/v2/models/digits/infer", json={"inputs": [tensor]})
            assert rest.status_code == 200 and rest.json()["model_version"] == "1", rest.text
            assert same_answer(v2_answer(rest.json()["outputs"]), served.expected[1][index])

        failures = []
        for case, model, changes, status, code in BAD_TENSORS:
            tensor = v2_tensor(served.payloads[0]["instances"], **changes)
            try:
                stub.ModelInfer(grpc_infer_request(model, tensor), metadata=key)
                failures.append(f"{case}: gRPC answered OK")
            except grpc.RpcError as error:
                if error.code().name != code or not error.details():
                    failures.append(f"{case}: {error.code().name} {error.details()}")
            rest = http.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
            if rest.status_code != status or not rest.json().get("error"):
                failures.append(f"{case}: REST {rest.status_code} {rest.text[:200]}")
        assert not failures, "\n".join(failures)

        good = grpc_infer_request("digits", v2_tensor(served.payloads[0]["instances"]))
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(good)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in refused.value.details()
        no_key = http.post("/v2/models/digits/infer", json={}, headers={"Authorization": ""})
        assert no_key.status_code == 401


@dataclass(frozen=True)
class Bad:
    """One row of the bad-request table: what is sent, the status and error text expected."""

    case: str
    status: int
    error: str
    body: bytes | None = b""
    method: str = "POST"
    path: str = PREDICT
    headers: dict | None = None  # None: the right API key


def instances(*rows: str) -> bytes:
    return ('{"instances": [' + ", ".join(f"[{row}]" for row in rows) + "]}").encode()


ZEROS = ", ".join(["0"] * 63)  # an instance is 64 numbers: ZEROS plus one more
BAD_REQUESTS = [
    Bad("malformed json", 400, "malformed JSON: Expecting", b'{"instances": [[0, 1'),
    Bad("not json", 400, "malformed JSON: Expecting value", b"instances=1"),
    Bad("empty body", 400, "the body is empty"),
    Bad("bare list", 422, 'the body is a list; expected {"instances"', b"[[0, 1]]"),
    Bad("unknown field", 422, 'unknown field(s) "inputs"', b'{"inputs": []}'),
    Bad("no instances", 422, '"instances" is empty; send 1 to 16', b'{"instances": []}'),
    Bad(
        "too many", 422, "17 instances in one request; at most 16", instances(*[ZEROS + ", 0"] * 17)
    ),
    Bad(
        "wrong shape",
        422,
        "instances[0] has shape [3]; expected a flat list of 64 numbers or nested lists of "
        "shape [1, 8, 8] or [8, 8]",
        instances("1, 2, 3"),
    ),
    Bad("wrong type", 422, 'instances[0][0] is the string "x"', instances('"x", ' + ZEROS)),
    Bad("boolean", 422, "instances[0][63] is the boolean true", instances(ZEROS + ", true")),
    Bad("nan", 422, "holds nan at flat position 0; expected finite", instances("NaN, " + ZEROS)),
    Bad("infinity", 422, "holds inf at flat position 63", instances(ZEROS + ", Infinity")),
    Bad("overflow", 422, "holds inf at flat position 0", instances("1e999, " + ZEROS)),
    Bad(
        "unknown model",
        404,
        "no model 'cats' here; this server serves 'digits'",
        path="/v1/models/cats:predict",
    ),
    Bad("unknown model info", 404, "no model 'cats'", None, "GET", "/v1/models/cats"),
    Bad("no api key", 401, "missing or wrong API key", headers={}),
    Bad(
        "wrong api key", 401, "'Authorization: Bearer <key>'", headers={"Authorization": "Bearer x"}
    ),
    Bad("body too large", 413, "larger than 65536 bytes", b" " * 70_000),
    Bad("unknown route", 404, "no route GET /v2/predict; routes:", None, "GET", "/v2/predict"),
    Bad("GET predict", 405, 'digits:predict takes POST {"instances"', None, "GET"),
    Bad("wrong method", 405, "no route DELETE /healthz", None, "DELETE", "/healthz"),
]


@pytest.mark.integration
def test_bad_requests_get_4xx_with_what_was_expected(served):
    failures = []
    with httpx.Client(base_url=served.url, timeout=15) as http:
        for bad in BAD_REQUESTS:
            headers = AUTH if bad.headers is None else bad.headers
            response = http.request(bad.method, bad.path, headers=headers, content=bad.body)
            error = response.json().get("error", "")
            if response.status_code != bad.status or bad.error not in error:
                failures.append(f"{bad.case}: {response.status_code} {response.text[:300]}")
        assert not failures, "\n".join(failures)
        # Nothing above hurt the replica: a good request still gets its answer.
        good = http.post(PREDICT, json=served.payloads[0], headers=AUTH)
        assert good.status_code == 200 and same_answer(good.json(), served.expected[1][0])


def model_names() -> st.SearchStrategy:
    """The served model's name mostly, any text in the path sometimes."""
    return st.sampled_from(["digits"]) | st.text(max_size=12)


@pytest.mark.integration
def test_fuzzed_requests_get_a_json_4xx_never_a_5xx_and_the_replica_keeps_answering(served):
    """tests/request_bodies.py's bodies over real HTTP: the proxy, FastAPI and the replica
    included. Bounded, as each request costs ~10 ms of proxy CPU here."""
    statuses: Counter = Counter()

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies(), name=model_names())
    def one_request(body: bytes, name: str) -> None:
        response = http.post(f"/v1/models/{quote(name, safe='')}:predict", content=body)
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 300:
            assert response.json()["error"], response.text[:300]
        else:
            assert len(response.json()["predictions"]) >= 1

    with client(served) as http:
        one_request()
        good = http.post(PREDICT, json=served.payloads[0])
    assert good.status_code == 200
    assert same_answer(good.json(), served.expected[good.json()["version"]][0])
    print(f"\nstatuses of {sum(statuses.values())} fuzzed requests: {dict(statuses)}")


@pytest.mark.integration
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_25_mb_body_gets_its_413_even_by_a_client_that_sends_it_all_first(served, framing):
    """urllib sends the whole body before it reads the answer; before the replica drained
    oversize bodies it got "Connection reset by peer" here (curl and httpx got the 413)."""
    whole = b'{"instances": [[' + b"0," * 12_500_000 + b"0]]}"
    body = whole
    if framing == "chunked":  # an iterable body without a length: urllib sends it chunked
        body = (whole[start : start + 2**16] for start in range(0, len(whole), 2**16))
    request = urllib.request.Request(served.url + PREDICT, data=body, headers=AUTH)
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(request, timeout=60)
    assert answered.value.code == 413
    assert "larger than 65536 bytes" in json.loads(answered.value.read())["error"]


# ---------------------------------------------------------------------- batching + metrics


@pytest.mark.integration
def test_concurrent_requests_form_batches_and_are_all_correct(served):
    with Load(served, threads=16, limit_s=4) as load:
        time.sleep(4)
    assert len(load.outcomes) > 50
    assert all(o.status == 200 and o.correct for o in load.outcomes), [
        o for o in load.outcomes if o.status != 200 or not o.correct
    ][:5]
    # Each replica keeps its own record; GET lands on any of them, so ask a few times.
    seen: dict[str, dict] = {}
    with client(served) as http:
        for _ in range(12):
            info = http.get("/v1/models/digits").json()
            seen[info["replica"]] = info["stats"]
        refused = http.post("/v1/models/digits:predict", json={"instances": [[1.0, 2.0]]})
        assert refused.status_code == 422
    assert max(stats["max_batch_size_seen"] for stats in seen.values()) > 1, seen
    assert sum(stats["requests"] for stats in seen.values()) >= len(load.outcomes)

    # The same facts on Ray's metrics endpoint (Prometheus names carry a `ray_` prefix).
    def batched_in_metrics() -> bool:
        text = scrape_metrics()
        batches = metric_sum(text, "ray_raylane_serve_batch_size_count", model="digits")
        single = metric_sum(text, "ray_raylane_serve_batch_size_bucket", model="digits", le="1.0")
        ok = metric_sum(text, "ray_raylane_serve_requests_total", code="200", version="1")
        refused = metric_sum(text, "ray_raylane_serve_requests_total", code="422")
        return batches > single > 0 and ok >= len(load.outcomes) and refused >= 1

    wait_for(batched_in_metrics, timeout_s=30, interval_s=1, what="batch metrics > 1")
    text = scrape_metrics()
    # A refused request is counted against the version that refused it, not version="".
    assert metric_sum(text, "ray_raylane_serve_requests_total", code="422", version="1") >= 1
    assert metric_sum(text, "ray_raylane_serve_model_version", alias="production") >= 1
    assert metric_sum(text, "ray_raylane_serve_request_latency_ms_count", model="digits") > 0


# ---------------------------------------------------------------------- replicas


@pytest.mark.integration
def test_sustained_load_scales_up_to_two_replicas_and_back_down(served):
    served.reset()
    wait_for(lambda: replicas() == 1, timeout_s=40, what="1 replica before the load")
    with Load(served, threads=12) as load:
        wait_for(lambda: replicas() == 2, timeout_s=20, what="a second replica under load")
        time.sleep(1)
    assert load.outcomes and all(o.status == 200 and o.correct for o in load.outcomes)
    wait_for(lambda: replicas() == 1, timeout_s=30, what="scale-down to 1 replica after the load")


@pytest.mark.integration
def test_killing_one_of_two_replicas_costs_at_most_one_retry(served):
    import ray

    served.reset()
    with Load(served, threads=12, retry=True) as load:
        wait_for(lambda: replicas() == 2, timeout_s=20, what="two replicas under load")
        time.sleep(1)
        victims = [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::raylane#ModelServer")
        ]
        assert len(victims) >= 2
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        time.sleep(5)
    after = [o for o in load.outcomes if o.at > killed_at]
    failed = [o for o in load.outcomes if o.status != 200]
    assert len(after) > 20, "the surviving replica kept answering"
    assert not failed, f"{len(failed)} requests failed even after one retry: {failed[:3]}"
    assert all(o.correct for o in load.outcomes)
    retried = sum(o.attempts == 2 for o in load.outcomes)
    print(f"\nkilled {victims[0]}: {len(load.outcomes)} requests, {retried} retried once")


# ---------------------------------------------------------------------- model updates


@pytest.mark.integration
def test_promotion_under_load_switches_versions_with_no_errors(served):
    served.reset()
    with Load(served, threads=8) as load:
        time.sleep(2)
        served.registry.promote("digits", "production", 2)
        promoted_at = time.monotonic()

        def all_recent_are_v2() -> bool:
            recent = [o for o in load.outcomes if o.at > time.monotonic() - 1.5]
            return len(recent) > 10 and all(o.version == 2 for o in recent)

        wait_for(all_recent_are_v2, timeout_s=15, what="responses from version 2")
    versions = [o.version for o in sorted(load.outcomes, key=lambda o: o.at)]
    assert all(o.status == 200 for o in load.outcomes), {o.status for o in load.outcomes}
    assert all(o.correct for o in load.outcomes), "a response disagreed with its named version"
    assert versions[0] == 1 and versions[-1] == 2
    switch = max(o.at for o in load.outcomes if o.version == 1) - promoted_at
    print(f"\n{len(versions)} requests, last version-1 answer {switch:.2f} s after the promotion")
    with client(served) as http:
        assert http.get("/v1/models/digits").json()["version"] == 2


def test_a_structurally_pruned_version_is_a_smaller_model_that_serves(served, tmp_path):
    """What `raylane optimize prune --structured` stores is a plain, smaller MLP that
    build_model rebuilds from its meta alone: promoted, it serves, and its HTTP answers equal
    the in-process ones."""
    from workloads.checkpoint import load_weights, read_meta, save_checkpoint
    from workloads.models import build_model, count_parameters
    from workloads.prune import prune_neurons
    from workloads.trust import CodePolicy

    served.reset()
    source = digits_checkpoint(tmp_path / "wide", seed=3, steps=8)
    meta = read_meta(source)
    spec, weights, _ = prune_neurons(meta["model"], load_weights(source), 0.5)
    small = build_model(spec, policy=CodePolicy.CONFIGURED)
    small.load_state_dict(weights)
    save_checkpoint(tmp_path / "pruned", model=small, meta={**meta, "model": spec})
    version = served.registry.register("digits", tmp_path / "pruned", lineage={"method": "prune"})
    wide = build_model(meta["model"], policy=CodePolicy.CONFIGURED)
    assert spec["kwargs"]["hidden_sizes"] == [16]  # of 32
    assert count_parameters(small) < 0.6 * count_parameters(wide)  # the head keeps its outputs
    try:
        served.registry.promote("digits", "production", version)
        expected = Predictor.from_registry(served.registry, f"digits:{version}")
        expected = expected.predict_instances(served.payloads[1]["instances"], max_instances=16)
        with client(served) as http:
            wait_for(
                lambda: http.get("/v1/models/digits").json().get("version") == version,
                timeout_s=30,
                what="the pruned version being served",
            )
            answer = http.post(PREDICT, json=served.payloads[1]).json()
        assert answer["version"] == version and same_answer(answer, expected)
    finally:
        served.reset()


@pytest.mark.integration
def test_serve_config_deploy_and_user_config_reconfigure_without_restart(served):
    """serve/config.yaml through the controller's declarative path (what `serve deploy` and
    the dashboard's REST API call), then a user_config change: the same replica switches."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    served.registry.promote("digits", "production", 2)
    config = yaml.safe_load(CONFIG_YAML.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": int(served.url.rsplit(":", 1)[1])}
    app = config["applications"][0]
    app["args"].update(
        storage=served.registry.storage.uri,
        num_cpus=0.25,
        api_key_env=API_KEY_ENV,
        autoscaling_config=None,
        watch_interval_s=0,
    )
    controller = _get_global_client()
    controller.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
    with client(served) as http:
        wait_for(
            lambda: replicas() == 1 and replicas("STOPPING") == 0, timeout_s=30, what="1 replica"
        )
        before = http.get("/v1/models/digits").json()
        assert (before["version"], before["batching"]["max_batch_size"]) == (2, 32)

        app["deployments"] = [
            {"name": "ModelServer", "user_config": {"model": "digits:1", "max_batch_size": 4}}
        ]
        controller.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
        wait_for(
            lambda: http.get("/v1/models/digits").json()["version"] == 1,
            timeout_s=20,
            what="version 1 after reconfigure",
        )
        after = http.get("/v1/models/digits").json()
        assert after["replica"] == before["replica"], "reconfigure must not restart the replica"
        assert (after["ref"], after["batching"]["max_batch_size"]) == ("digits:1", 4)
        response = http.post(PREDICT, json=served.payloads[3]).json()
        assert response["version"] == 1 and same_answer(response, served.expected[1][3])


# ---------------------------------------------------------------------- trust boundaries


def planted_version(registry: Registry, tmp_path: Path, model: dict, *, weights: bytes = b""):
    """Register a real digits checkpoint whose meta names `model` (and whose weights, when
    given, are replaced): what someone with write access to the registry could store."""
    import json

    source = digits_checkpoint(tmp_path / "planted", seed=1, steps=1)
    meta = json.loads((source / "meta.json").read_text())
    (source / "meta.json").write_text(json.dumps({**meta, "model": model}))
    if weights:
        (source / "model.safetensors").write_bytes(weights)
    return registry.register("digits", source, lineage={"planted": True})


@pytest.mark.integration
def test_a_promoted_hostile_or_corrupt_version_never_runs_and_the_current_one_keeps_serving(
    served, tmp_path
):
    """The alias moves to a version that names an importable module (its top-level code would
    leave a marker file), then to one with a garbage safetensors header: the replica refuses
    both, imports nothing, and keeps answering with version 1."""
    served.reset()
    marker = tmp_path / "imported"
    # Ray puts the driver's working directory (the repository) on its workers' import path, so
    # a replica could import `tests.planted_by_a_registry_writer` if it were ever asked to.
    module = Path(__file__).parents[1] / "planted_by_a_registry_writer.py"
    module.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    try:
        hostile = planted_version(
            served.registry,
            tmp_path / "a",
            {"family": "custom", "class": "tests.planted_by_a_registry_writer:Net", "kwargs": {}},
        )
        corrupt = planted_version(
            served.registry,
            tmp_path / "b",
            digits_spec(),
            weights=(2**62).to_bytes(8, "little") + b"{}",
        )
        with client(served) as http:
            for version in (hostile, corrupt):
                served.registry.promote("digits", "production", version)
                time.sleep(2.0)  # four watch intervals of the replica
                answer = http.post(PREDICT, json=served.payloads[0])
                assert answer.status_code == 200 and answer.json()["version"] == 1
                assert same_answer(answer.json(), served.expected[1][0])
        assert not marker.exists(), "a registry entry chose code that ran on a replica"
    finally:
        module.unlink()
        served.reset()


def digits_spec() -> dict:
    from workloads.config import ModelConfig
    from workloads.models import model_spec

    config = ModelConfig(family="mlp", hidden_sizes=[32], dropout=0.0)
    return model_spec(config, input_shape=[1, 8, 8], num_classes=10)


@pytest.mark.integration
def test_a_custom_class_on_the_operators_allow_list_is_served(served, tmp_path):
    """With custom_model_modules set by the operator, a custom model version serves, and its
    HTTP answers equal the in-process ones."""
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app
    from workloads.checkpoint import save_checkpoint
    from workloads.models import build_model
    from workloads.trust import CodePolicy

    served.reset()
    source = digits_checkpoint(tmp_path / "custom", seed=2, steps=1)
    spec = {"family": "custom", "class": "tests.fixtures_user_model:TinyNet",
            "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10}}  # fmt: skip
    import json

    meta = json.loads((source / "meta.json").read_text())
    model = build_model(spec, policy=CodePolicy.CONFIGURED)
    save_checkpoint(source, model=model, meta={**meta, "model": spec})
    version = served.registry.register("digits", source, lineage={})
    args = {**served.args, "model": f"digits:{version}",
            "custom_model_modules": ["tests.fixtures_user_model"]}  # fmt: skip
    try:
        ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        expected = Predictor.from_registry(
            served.registry, f"digits:{version}", allow_modules=["tests.fixtures_user_model"]
        ).predict_instances(served.payloads[1]["instances"], max_instances=16)
        with client(served) as http:
            answer = http.post(PREDICT, json=served.payloads[1]).json()
        assert answer["version"] == version and same_answer(answer, expected)
    finally:
        served.reset()


@pytest.mark.integration
def test_a_model_scaled_to_zero_answers_its_next_request_correctly(served):
    """min_replicas 0: idle, the app goes to zero replicas; the next request waits for the cold
    start and gets the right answer (no 5xx)."""
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app

    zero = {**AUTOSCALING, "min_replicas": 0, "initial_replicas": 1, "downscale_to_zero_delay_s": 1}
    try:
        ray_serve.run(build_app({**served.args, "autoscaling_config": zero}), name=APP_NAME,
                      route_prefix="/")  # fmt: skip
        wait_for(lambda: replicas() + replicas("STARTING") == 0, timeout_s=60,
                 what="the idle app to scale to zero replicas")  # fmt: skip
        with client(served) as http:
            response = http.post(PREDICT, json=served.payloads[3])
        assert response.status_code == 200, response.text
        assert same_answer(response.json(), served.expected[1][3])
    finally:
        served.reset()


@pytest.mark.integration
def test_ray_serve_and_seaweedfs_started_here_listen_only_on_loopback(served):
    """Everything this test session started (the local Ray of `raylane serve`/`connect()`: GCS,
    raylet, agents, workers, Serve's controller, proxy and replicas; SeaweedFS) listens on
    127.0.0.1 only."""
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    roots = {os.getpid()}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and session.encode() in (entry / "cmdline").read_bytes():
                roots.add(int(entry.name))
        except OSError:
            continue
    sockets = listening_sockets(descendants(roots))
    served_ports = {int(served.url.rsplit(":", 1)[1]), int(served.grpc_target.rsplit(":", 1)[1])}
    assert served_ports <= {port for _, port, _ in sockets}, "the check must see Serve's proxies"
    outside = [(address, port) for address, port, _ in sockets if not is_loopback(address)]
    assert not outside, f"listening beyond loopback: {outside}"


@pytest.mark.integration
def test_an_int8_version_made_by_optimize_quantize_is_promoted_and_served(served):
    """`raylane optimize quantize --promote production` on version 1: the replica follows the
    alias to the int8 version (ONNX Runtime, loaded from safetensors with no code change), and
    its HTTP answers equal the same version's in-process answers."""
    from workloads.optimize import main as optimize

    served.reset()
    try:
        args = ["quantize", "--model", "digits:1", "--storage", served.registry.storage.uri]
        assert optimize([*args, "--promote", "production"]) == 0
        name, version = served.registry.resolve("digits@production")
        assert served.registry.describe(name, version)["lineage"]["parent"] == "digits:1"
        predictor = Predictor.from_registry(served.registry, f"digits:{version}")
        with client(served) as http:
            wait_for(
                lambda: http.get("/v1/models/digits").json().get("version") == version,
                timeout_s=30,
                what="the replica to follow digits@production to the int8 version",
            )
            for payload in served.payloads[:6]:
                answer = http.post(PREDICT, json=payload)
                assert answer.status_code == 200, answer.text
                expected = predictor.predict_instances(payload["instances"], max_instances=16)
                assert answer.json()["version"] == version and same_answer(answer.json(), expected)
    finally:
        served.reset()


# ---------------------------------------------------------------------- many models in one app

MODELS = ("mm-a", "mm-b", "mm-c")


def multi_model_registry(registry: Registry, root: Path) -> dict[tuple[str, int], Predictor]:
    """Three models (mm-a with a second version), as `raylane serve --models` would find them:
    mm-a and mm-b at production -> 1, mm-c pinned. Returns the in-process predictor of each."""
    for seed, name in enumerate(MODELS, start=3):
        registry.register(name, digits_checkpoint(root / name, seed=seed, steps=4), lineage={})
    registry.register("mm-a", digits_checkpoint(root / "a2", seed=9, steps=12), lineage={})
    for name in ("mm-a", "mm-b"):
        registry.promote(name, "production", 1)
    versions = [("mm-a", 1), ("mm-a", 2), ("mm-b", 1), ("mm-c", 1)]
    return {(n, v): Predictor.from_registry(registry, f"{n}:{v}") for n, v in versions}


def answers(http: httpx.Client, prefix: str, name: str, payload: dict) -> tuple[int, dict]:
    response = http.post(f"{prefix}/v1/models/{name}:predict", json=payload)
    assert response.status_code == 200, response.text
    return response.json()["version"], response.json()


@pytest.mark.integration
def test_three_models_share_two_replicas_follow_their_own_aliases_and_evict_lru(served, tmp_path):
    """`raylane serve --models ...` (the README's command): one app, two replicas, room for two
    models each. Every model answers by name as in-process; GET /v1/models lists them; promoting
    mm-a changes only mm-a's answers; a second app (another name and route prefix) deploys beside
    it, and cycling three models on its one replica evicts and reloads them, counted."""
    from ray import serve as ray_serve

    from serve.app import build_app
    from serve.command import parse_command

    expected = multi_model_registry(served.registry, tmp_path)
    command = ["--models", "mm-a@production,mm-b@production,mm-c:1",
               "--max-models-per-replica", "2", "--app-name", "models", "--route-prefix",
               "/models", "--num-replicas", "2", "--num-cpus", "0.25", "--watch-interval-s",
               "0.5", "--api-key-env", API_KEY_ENV, "--storage", served.registry.storage.uri]  # fmt: skip
    args, _ = parse_command(command)
    one = args.model_copy(
        update={"app_name": "models-one", "route_prefix": "/one", "num_replicas": 1}
    )
    payload = served.payloads[5]

    def correct(prefix: str, name: str) -> int:
        version, body = answers(http, prefix, name, payload)
        want = expected[(name, version)].predict_instances(payload["instances"], max_instances=16)
        assert body["model"] == name and same_answer(body, want), (name, version)
        return version

    try:
        ray_serve.run(build_app(args), name=args.app_name, route_prefix=args.route_prefix)
        with client(served) as http:
            assert {name: correct("/models", name) for name in MODELS} == dict.fromkeys(MODELS, 1)
            listed = http.get("/models/v1/models").json()["models"]
            assert [(m["name"], m["ref"], m["version"]) for m in listed] == [
                ("mm-a", "mm-a@production", 1), ("mm-b", "mm-b@production", 1), ("mm-c", "mm-c:1", 1)
            ]  # fmt: skip
            unknown = http.post("/models/v1/models/digits:predict", json=payload)
            assert unknown.status_code == 404
            assert "this app serves: mm-a, mm-b, mm-c" in unknown.json()["error"]

            served.registry.promote("mm-a", "production", 2)
            wait_for(lambda: correct("/models", "mm-a") == 2, timeout_s=20, what="mm-a at v2")
            assert [correct("/models", name) for name in MODELS] == [2, 1, 1]
            tensor = {"inputs": [v2_tensor(payload["instances"])]}
            v2 = http.post("/models/v2/models/mm-c/infer", json=tensor).json()
            want = expected[("mm-c", 1)].predict_instances(payload["instances"], max_instances=16)
            assert v2["model_version"] == "1" and same_answer(v2_answer(v2["outputs"]), want)

            ray_serve.run(build_app(one), name=one.app_name, route_prefix=one.route_prefix)
            for name in MODELS * 2:  # one replica, room for two: every use after two is a load
                assert correct("/one", name) == (2 if name == "mm-a" else 1)
            record = http.get("/one/v1/models/mm-a").json()["models"]
            assert record["loads"]["mm-a"] >= 2 and sum(record["evictions"].values()) >= 3, record
            assert len(record["loaded"]) <= 2 and record["max_models_per_replica"] == 2
            # Neither app replaced the other, nor the module's app at "/".
            assert correct("/models", "mm-b") == 1
            assert http.post(PREDICT, json=payload).status_code == 200

        def evictions_exported() -> bool:  # ours, and Ray's own multiplexing counter
            text = scrape_metrics()
            ours = metric_sum(text, "ray_raylane_serve_model_evictions_total")
            rays = metric_sum(text, "ray_serve_multiplexed_models_unload_counter_total")
            return ours >= 3 and rays >= 3

        wait_for(evictions_exported, timeout_s=30, interval_s=1, what="eviction metrics")
        print(f"\none replica of models-one: {record}")
    finally:
        for name in ("models", "models-one"):
            ray_serve.delete(name)

"""Canary rollouts end to end: a real local Ray and Serve, real HTTP under a steady load, three
versions of `digits` in a real registry on SeaweedFS, `raylane rollout` run as a user runs it.

    flock /tmp/raylane-ray.lock .venv/bin/python -m pytest tests/integration/test_rollout.py -q

One Serve app for the module (one replica following `digits@production` every 0.5 s); each test
puts the alias back on version 1 first. Version 3 is made to fail every request by the
test-only fault-injection setting ($RAYLANE_TEST_FAULTS, serve/canary.py). Steps last 3 s.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from conftest import TEST_BUCKET
from helpers import (
    ThreadedLoad,
    digits_checkpoint,
    digits_data,
    environment,
    metric_sum,
    scrape_metrics,
    wait_for,
)

from cluster.registry import Registry
from cluster.s3server import free_port
from cluster.storage import Storage
from raylane.rollout import main as rollout
from serve.rollout import NAMESPACE, controller_name, find_controller, read_state
from serve.traffic import LIVE
from workloads.checkpoint import open_registry

PREDICT = "/v1/models/digits:predict"
ENVIRONMENT = {"RAYLANE_TEST_FAULTS": "digits:3=1", "RAY_metrics_report_interval_ms": "1000"}


@pytest.fixture(scope="module", autouse=True)
def replica_environment():
    """Set before the module's Ray starts, so that its replicas inherit them."""
    with environment(ENVIRONMENT):
        yield


@pytest.fixture(scope="module")
def registry(s3_server, tmp_path_factory) -> Registry:
    """digits 1, 2 (good) and 3 (fails by fault injection); production -> 1."""
    registry = open_registry(Storage(f"s3://{TEST_BUCKET}/rollout-{uuid.uuid4().hex[:8]}"))
    root = tmp_path_factory.mktemp("rollout-models")
    for seed in (1, 2, 3):
        checkpoint = digits_checkpoint(root / f"v{seed}", seed=seed, steps=4)
        registry.register("digits", checkpoint, lineage={"seed": seed})
    return registry


@pytest.fixture(scope="module")
def url(ray_session, registry) -> str:
    from ray import serve as ray_serve

    from serve.app import APP_NAME, build_app

    registry.promote("digits", "production", 1)
    port = free_port()
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "digits@production", "storage": registry.storage.uri, "num_cpus": 0.25,
            "api_key_env": None, "watch_interval_s": 0.5, "batch_wait_timeout_s": 0.005}  # fmt: skip
    ray_serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    ray_serve.shutdown()


@pytest.fixture
def served(url, registry) -> str:
    """The app serving version 1, no rollout running."""
    registry.promote("digits", "production", 1)
    with httpx.Client(base_url=url, timeout=15) as http:
        wait_for(lambda: http.get("/v1/models/digits").json()["version"] == 1, timeout_s=20,
                 what="the app serving version 1")  # fmt: skip
    return url


@dataclass
class Answer:
    at: float
    status: int
    version: int | None


class Load(ThreadedLoad):
    """`threads` clients POST one digit each in a loop until the block ends."""

    def __init__(self, url: str, *, threads: int = 4):
        super().__init__(threads)
        self.url, self.answers = url, []
        self.instances = digits_data()[0][:16].tolist()

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as http:
            n = worker
            while not self._stop.is_set():
                n += 1
                body = {"instances": [self.instances[n % 16]]}
                response = http.post(PREDICT, json=body)
                version = response.json().get("version") if response.status_code == 200 else None
                if version is not None:  # the header and the body name the same version
                    assert response.headers["x-model-version"] == str(version)
                self.answers.append(Answer(time.monotonic(), response.status_code, version))


def run(registry: Registry, *args: str) -> None:
    assert rollout([*args, "--storage", registry.storage.uri]) == 0


def stored(registry: Registry):
    return read_state(registry.storage, "digits")[0]


def finished(registry: Registry) -> bool:
    return stored(registry).status not in LIVE  # "promoting" is not over yet


@pytest.mark.integration
def test_a_good_candidate_steps_up_under_load_and_the_alias_moves_with_no_errors(served, registry):
    with Load(served) as load:
        run(registry, "start", "digits:2", "--alias", "production", "--steps", "10,50,100",
            "--step-seconds", "3", "--max-error-rate", "0.01", "--max-latency-ratio", "3")  # fmt: skip
        wait_for(lambda: finished(registry), timeout_s=60, what="the rollout to end")
        wait_for(lambda: load.answers[-1].version == 2, timeout_s=10, what="version 2 answering")
        time.sleep(1)
    state = stored(registry)
    assert state.status == "promoted", state.reason
    assert registry.resolve("digits@production") == ("digits", 2)
    assert [(e["event"], e["weight"]) for e in state.history] == [
        ("start", 10), ("step", 50), ("promote", 100)
    ]  # fmt: skip
    statuses = Counter(a.status for a in load.answers)
    assert statuses == {200: len(load.answers)}, statuses
    versions = Counter(a.version for a in load.answers)
    assert versions[1] > 0 and versions[2] > 0, versions
    wait_for(lambda: find_controller("digits") is None, timeout_s=10, what="the controller to end")

    def per_version_metrics() -> bool:
        text = scrape_metrics()
        latency = "ray_raylane_serve_request_latency_ms_count"
        return metric_sum(text, latency, version="2") > 0 and metric_sum(
            text, "ray_raylane_rollout_weight", candidate="2"
        ) == 100  # fmt: skip

    wait_for(per_version_metrics, timeout_s=20, interval_s=1, what="per-version metrics")


@pytest.mark.integration
def test_a_failing_candidate_is_rolled_back_within_its_first_step_and_the_alias_stays(
    served, registry
):
    with Load(served) as load:
        run(registry, "start", "digits:3", "--alias", "production", "--steps", "10,50,100",
            "--step-seconds", "3")  # fmt: skip
        started = time.monotonic()
        wait_for(lambda: finished(registry), timeout_s=30, what="the rollback")
        rolled_back = time.monotonic()
        time.sleep(3)  # the load goes on: after the rollback only version 1 answers
    state = stored(registry)
    assert state.status == "rolled_back" and "error rate of version 3" in state.reason
    assert [e["event"] for e in state.history] == ["start", "rollback"]  # within the first step
    assert rolled_back - started < 3 + 5
    assert registry.resolve("digits@production") == ("digits", 1)
    failed = [a for a in load.answers if a.status != 200]
    assert {a.status for a in failed} <= {500}
    assert len(failed) <= 0.15 * len(load.answers), f"{len(failed)} of {len(load.answers)}"
    late = [a for a in load.answers if a.at > rolled_back + 1.5]
    assert late and all(a.status == 200 and a.version == 1 for a in late)
    print(f"\n{len(failed)} of {len(load.answers)} requests failed before the rollback")


@pytest.mark.integration
def test_a_killed_controller_is_restarted_from_the_stored_step_and_sticky_clients_stay_put(
    served, registry, capsys
):
    import ray

    with Load(served) as load:
        run(registry, "start", "digits:2", "--alias", "production", "--steps", "10,30,60,100",
            "--step-seconds", "3", "--max-latency-ratio", "3", "--sticky-header", "X-Client-Id")  # fmt: skip
        wait_for(lambda: stored(registry).step == 1, timeout_s=30, what="the second step")
        ray.kill(ray.get_actor(controller_name("digits"), namespace=NAMESPACE), no_restart=True)
        wait_for(lambda: find_controller("digits") is None, timeout_s=10, what="no controller")
        # Sampled after a replica's poll (at most 1 s), so that no replica still routes by the
        # last step's weight, and before the next step can come: a new controller starts only
        # after CONTROLLER_GRACE_S and then watches a whole step.
        time.sleep(1.5)
        seen = sticky_versions(served, clients=30)
        assert (stored(registry).status, stored(registry).step) == ("running", 1)
        # No command: a replica starts a new controller, which moves on from the stored step.
        wait_for(lambda: stored(registry).step == 2, timeout_s=40,
                 what="a controller started by a replica to take the next step")  # fmt: skip
        capsys.readouterr()
        run(registry, "resume", "digits")  # what a user would run: the controller is back
        assert "its controller is running" in capsys.readouterr().out
        wait_for(lambda: finished(registry), timeout_s=60, what="the resumed rollout to end")
    state = stored(registry)
    assert state.status == "promoted", state.reason
    assert [e["weight"] for e in state.history] == [10, 30, 60, 100]  # not started over
    assert all(a.status == 200 for a in load.answers)
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {1, 2}, "30% of 30 clients"


def sticky_versions(url: str, *, clients: int) -> dict[str, set[int]]:
    """The versions each client id was answered by, over three requests each."""
    instance = digits_data()[0][0].tolist()
    seen: dict[str, set[int]] = {}
    with httpx.Client(base_url=url, timeout=15) as http:
        for _ in range(3):
            for n in range(clients):
                headers = {"X-Client-Id": f"client-{n}"}
                answer = http.post(PREDICT, json={"instances": [instance]}, headers=headers)
                seen.setdefault(f"client-{n}", set()).add(answer.json()["version"])
    return seen

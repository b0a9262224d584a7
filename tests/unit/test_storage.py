"""Storage on a local directory, what every URI means, and how an S3 endpoint that does not
answer is retried; the backend contract is in tests/storage_contract.py (also run on S3 by
tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import pickle

import pytest
from storage_contract import *  # noqa: F403  (the contract's tests, collected here)

from cluster.errors import StorageError, StorageUnavailable
from cluster.storage import Storage
from cluster.storage_s3 import RETRY_ENV, retry_delays


@pytest.fixture
def storage(local_storage):
    return local_storage


@pytest.mark.parametrize(
    "uri, message",
    [
        ("gs://bucket/x", "unsupported storage URI"),
        ("s3://", "malformed storage URI"),
        ("s3://Bad_Bucket/x", "malformed storage URI"),
        ("", "storage URI is empty"),
    ],
)
def test_malformed_uris_are_rejected(uri, message):
    with pytest.raises(StorageError, match=message):
        Storage(uri)


def test_local_storage_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="not a writable directory"):
        Storage(str(blocker / "artifacts")).check()


def test_a_storage_travels_as_its_uri_not_as_an_object(tmp_path):
    with pytest.raises(TypeError, match="pass storage.uri"):
        pickle.dumps(Storage(str(tmp_path)))


def test_storage_that_does_not_answer_is_retried_with_backoff_then_named(monkeypatch):
    from cluster.s3server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)  # another test's profile must not be read
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv(RETRY_ENV, "2")
    assert list(retry_delays()) == [0.5, 1.0]
    with pytest.raises(StorageUnavailable) as caught:
        Storage("s3://bucket/x").read_bytes("model.json")
    assert f"cannot reach the S3 endpoint {endpoint} for s3://bucket/x/model.json" in str(
        caught.value
    )
    assert "is the server running?" in str(caught.value)
    assert str(caught.value).endswith("(gave up after retrying for 1.5 s)")


def test_the_retry_budget_is_bounded_and_doubles_up_to_8_s(monkeypatch):
    monkeypatch.delenv(RETRY_ENV, raising=False)
    delays = list(retry_delays())
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and max(delays) == 8.0
    assert sum(delays) <= 30 < sum(delays) + 8
    monkeypatch.setenv(RETRY_ENV, "soon")
    with pytest.raises(StorageError, match="RAYLANE_STORAGE_RETRY_S='soon' is not a number"):
        list(retry_delays())

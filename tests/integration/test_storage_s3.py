"""Storage on a real SeaweedFS: the backend contract (tests/storage_contract.py) and the errors
a user meets with S3: a missing bucket, wrong credentials, an unreachable endpoint."""

from __future__ import annotations

import time

import pytest
from storage_contract import *  # noqa: F403  (the contract's tests, collected here)

from cluster.errors import StorageError
from cluster.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(s3_storage):
    return s3_storage


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/x").check()


def test_wrong_credentials_are_reported_without_the_secret(s3_server, monkeypatch):
    # Keys in the environment win over the server's profile, as in every AWS client.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.credentials()["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(StorageError) as caught:
        Storage(f"s3://{s3_server.bucket}/x").check()
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)
    assert "definitely-wrong-secret" not in str(caught.value)


def test_unreachable_endpoint_fails_within_seconds(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        Storage("s3://raylane-test/x").check()
    assert time.monotonic() - started < 15

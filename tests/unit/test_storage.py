"""Storage on a local directory, and what every URI means; the backend contract is in
tests/storage_contract.py (also run on S3 by tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import pickle

import pytest
from storage_contract import *  # noqa: F403  (the contract's tests, collected here)

from cluster.errors import StorageError
from cluster.storage import Storage


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

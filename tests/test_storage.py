"""Storage against a real SeaweedFS and a local directory: objects, conditional writes, errors."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.errors import NotFoundError, StorageError
from cluster.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def storage(request) -> Storage:
    return request.getfixturevalue(f"{request.param}_storage")


def test_bytes_json_list_delete_round_trip(storage):
    storage.write_json("runs/a/summary.json", {"accuracy": 0.97})
    storage.write_bytes("runs/a/weights.bin", b"\x00\x01")
    storage.write_bytes("runs/b/weights.bin", b"\x02")

    assert storage.read_json("runs/a/summary.json") == {"accuracy": 0.97}
    assert storage.exists("runs/a/weights.bin") and not storage.exists("runs/a/nothing")
    assert storage.list("runs/a") == ["runs/a/summary.json", "runs/a/weights.bin"]
    assert storage.list_dirs("runs") == ["a", "b"]
    assert storage.list_dirs() == ["runs"]

    storage.delete("runs/a")
    assert storage.list("runs") == ["runs/b/weights.bin"]
    with pytest.raises(NotFoundError, match="does not exist"):
        storage.read_bytes("runs/a/summary.json")


def test_directories_upload_and_download(storage, tmp_path):
    source = tmp_path / "ckpt"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(os.urandom(300_000))
    (source / "meta.json").write_text("{}")
    (source / "sub" / "x.txt").write_text("x")

    storage.upload_dir(source, "ckpts/1", last=("meta.json",))
    copy = storage.download_dir("ckpts/1", tmp_path / "copy")

    for name in ("model.safetensors", "meta.json", "sub/x.txt"):
        assert (copy / name).read_bytes() == (source / name).read_bytes()
    with pytest.raises(NotFoundError):
        storage.download_dir("ckpts/2", tmp_path / "none")


def test_put_if_absent_has_exactly_one_winner(storage):
    def claim(i: int) -> bool:
        return storage.put_if_absent("claims/slot", str(i).encode())

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(claim, range(8)))
    assert wins.count(True) == 1
    assert storage.read_bytes("claims/slot") == str(wins.index(True)).encode()


def test_compare_and_swap_rejects_a_stale_version(storage):
    storage.write_bytes("alias.json", b"v1")
    _, version = storage.read_versioned("alias.json")
    assert storage.compare_and_swap("alias.json", b"v2", version)
    assert not storage.compare_and_swap("alias.json", b"v3", version)  # stale
    assert storage.read_bytes("alias.json") == b"v2"
    assert not storage.compare_and_swap("alias.json", b"v4", None)  # must-not-exist
    assert storage.compare_and_swap("new.json", b"n1", None)


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


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        Storage("s3://no-such-bucket/x").check()


def test_wrong_credentials_are_reported_without_the_secret(s3_server, monkeypatch):
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


def test_local_storage_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="not writable"):
        Storage(str(blocker / "artifacts")).check()

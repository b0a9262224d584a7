"""Storage's contract, run on every backend: objects, directories, conditional writes.

tests/unit/test_storage.py runs it on a local directory, tests/integration/test_storage_s3.py on
a real SeaweedFS; each supplies the `storage` fixture.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.errors import NotFoundError


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

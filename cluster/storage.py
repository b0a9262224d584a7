"""One `Storage` over a local directory or an S3-compatible bucket.

    storage = Storage.from_uri("s3://raylane/dev")      # or "./artifacts"; None -> $RAYLANE_STORAGE
    storage.check()                                     # fails fast: endpoint, credentials, bucket
    storage.write_json("runs/x/summary.json", {...})
    fs, root = storage.arrow_filesystem()               # what Ray Train, Tune and Ray Data take

Keys are '/'-separated paths below the storage root. The URI picks a backend, one module each
(cluster/storage_local.py, cluster/storage_s3.py); this facade adds what every backend shares:
URIs, JSON, whole directories, arrow paths. A new scheme is one new backend module and one line
in `_backend_for`.

A Storage crosses process boundaries (Ray tasks, actors, train loops, Serve args) as its URI
string, never as an object: each process builds its own client from its own environment.

Writes become visible whole (a temporary file and a rename locally, an atomic PutObject on S3).
`put_if_absent` and `compare_and_swap` are the two primitives the model registry is built on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cluster.errors import StorageError
from cluster.storage_local import LocalBackend
from cluster.storage_s3 import S3Backend

DEFAULT_URI = "./artifacts"
ENV_STORAGE = "RAYLANE_STORAGE"


class Storage:
    """A root (local directory or `s3://bucket/prefix`) with atomic, conditional object writes."""

    def __init__(self, uri: str):
        self.uri, self._backend = _backend_for(uri)

    @classmethod
    def from_uri(cls, uri: str | None = None) -> Storage:
        """`uri`, else $RAYLANE_STORAGE, else ./artifacts."""
        return cls(uri or os.environ.get(ENV_STORAGE) or DEFAULT_URI)

    def child(self, *parts: str) -> Storage:
        """A Storage rooted at a key prefix below this one."""
        return Storage(self.uri_for("/".join(parts)))

    def uri_for(self, key: str = "") -> str:
        key = key.strip("/")
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    @property
    def local_root(self) -> Path | None:
        """The directory of a local storage; None for a remote one."""
        return self._backend.root if isinstance(self._backend, LocalBackend) else None

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __reduce__(self):
        raise TypeError("a Storage travels between processes as its URI: pass storage.uri")

    def check(self) -> None:
        """Raise a clear StorageError within seconds unless storage is usable."""
        self._backend.check(ENV_STORAGE)

    # ------------------------------------------------------------------ objects

    def read_bytes(self, key: str) -> bytes:
        return self._backend.read_bytes(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._backend.write_bytes(key, data)

    def read_json(self, key: str) -> Any:
        raw = self.read_bytes(key)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StorageError(f"{self.uri_for(key)} is not valid JSON: {error}") from None

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, dump_json(value))

    def exists(self, key: str) -> bool:
        return self._backend.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        """All keys below `prefix`, recursively, relative to the storage root, sorted."""
        return self._backend.list(prefix.strip("/"))

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-directories (common prefixes) of `prefix`, sorted."""
        return self._backend.list_dirs(prefix.strip("/"))

    def delete(self, key: str) -> None:
        """Delete one object, or everything below `key` when it names a directory/prefix."""
        self._backend.delete(key)

    # ------------------------------------------------------------------ conditional writes

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists. True when this call created it."""
        return self._backend.put_if_absent(key, data)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """Content plus an opaque version token for `compare_and_swap`."""
        return self._backend.read_versioned(key)

    def compare_and_swap(self, key: str, data: bytes, expected: str | None) -> bool:
        """Write `data` only if `key` is still at version `expected` (None: must not exist).

        True when this call won; False when another writer changed `key` first.
        """
        if expected is None:
            return self.put_if_absent(key, data)
        return self._backend.compare_and_swap(key, data, expected)

    # ------------------------------------------------------------------ directories

    def upload_dir(self, local_dir: str | Path, key: str, *, last: tuple[str, ...] = ()) -> None:
        """Copy a local directory below `key`; files named in `last` are written after the rest,
        so a reader that waits for them never sees a partial directory."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for group in (
            [p for p in files if p.name not in last],
            [p for p in files if p.name in last],
        ):
            self._each(
                lambda p: self._backend.upload_file(
                    p, f"{key}/{p.relative_to(local_dir).as_posix()}"
                ),
                group,
            )

    def download_dir(self, key: str, local_dir: str | Path) -> Path:
        """Copy everything below `key` into `local_dir`; raise NotFoundError if there is none."""
        from cluster.errors import NotFoundError

        local_dir = Path(local_dir)
        keys = self.list(key)
        if not keys:
            raise NotFoundError(f"{self.uri_for(key)} is empty or does not exist")
        skip = len(key.strip("/") + "/") if key.strip("/") else 0

        def fetch(k: str) -> None:
            target = local_dir / k[skip:]
            target.parent.mkdir(parents=True, exist_ok=True)
            self._backend.download_file(k, target)

        self._each(fetch, keys)
        return local_dir

    def _each(self, fn, items: list) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
        else:
            self._backend.map_parallel(fn, items)

    # ------------------------------------------------------------------ Ray Train / Tune / Data

    def arrow_filesystem(self):
        """(pyarrow filesystem, root path) for Ray Train/Tune `storage_path` and Ray Data."""
        return self._backend.arrow_filesystem(), self._backend.arrow_root

    def arrow_path(self, key: str) -> str:
        """A key as a path inside `arrow_filesystem()`."""
        root = self._backend.arrow_root
        return f"{root}/{key.strip('/')}" if key.strip("/") else root

    def key_from_arrow_path(self, path: str) -> str:
        """Inverse of `arrow_path` (Tune records checkpoint paths without a scheme)."""
        root = self._backend.arrow_root
        path = path.removeprefix("s3://")
        if not path.startswith(root):
            raise StorageError(f"{path} is not inside storage {self.uri}")
        return path[len(root) :].strip("/")


def _backend_for(uri: str) -> tuple[str, LocalBackend | S3Backend]:
    """-> (canonical uri, backend): the one place that tells the schemes apart."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError("storage URI is empty: pass s3://bucket/prefix or a local directory")
    uri = uri.strip().removeprefix("file://")
    if "://" not in uri:
        root = Path(uri).expanduser().resolve()
        return str(root), LocalBackend(root)
    scheme, _, rest = uri.partition("://")
    if scheme != "s3":
        raise StorageError(
            f"unsupported storage URI {uri!r}: use s3://bucket/prefix (AWS S3, MinIO, SeaweedFS) "
            "or a local directory path"
        )
    bucket, _, prefix = rest.partition("/")
    if not _valid_bucket(bucket):
        raise StorageError(
            f"malformed storage URI {uri!r}: the bucket name must be 3-63 lowercase letters, "
            "digits, '.' or '-' (e.g. s3://my-bucket/raylane)"
        )
    prefix = prefix.strip("/")
    canonical = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return canonical, S3Backend(bucket, prefix)


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum()


def dump_json(value: Any) -> bytes:
    """The JSON every raylane file is written in: indented, sorted keys, one trailing newline."""
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()

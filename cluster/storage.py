"""One `Storage` over a local directory or an S3-compatible bucket.

    storage = Storage.from_uri("s3://raylane/dev")      # or "./artifacts"; None -> $RAYLANE_STORAGE
    storage.check()                                     # fails fast: endpoint, credentials, bucket
    storage.write_json("runs/x/summary.json", {...})
    fs, root = storage.arrow_filesystem()               # what Ray Train, Tune and Ray Data take

Keys are '/'-separated paths below the storage root. S3 settings come from the standard AWS
chain only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL, profiles): never from arguments, and never printed. The pyarrow filesystem is
built without explicit keys, so when Ray ships it to another node it picks the credentials up
from that node's environment instead of carrying them inside pickled task arguments.

Writes become visible whole: locally through a temporary file and an atomic rename, on S3
because a PutObject is atomic. `put_if_absent` and `compare_and_swap` are the two primitives the
model registry is built on (S3 `If-None-Match` / `If-Match`; `link`/`rename` under a lock file
locally).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cluster.errors import NotFoundError, StorageError
from cluster.s3 import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    make_client,
    region,
    s3_endpoint,
    transfer_config,
    translate_s3_error,
)

DEFAULT_URI = "./artifacts"
ENV_STORAGE = "RAYLANE_STORAGE"


class Storage:
    """A root (local directory or `s3://bucket/prefix`) with atomic, conditional object writes."""

    def __init__(self, uri: str):
        self.uri, self.bucket, self.prefix, self.local_root = _parse(uri)
        self._client = None

    @classmethod
    def from_uri(cls, uri: str | None = None) -> Storage:
        """`uri`, else $RAYLANE_STORAGE, else ./artifacts."""
        return cls(uri or os.environ.get(ENV_STORAGE) or DEFAULT_URI)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def child(self, *parts: str) -> Storage:
        """A Storage rooted at a key prefix below this one."""
        return Storage(self.uri_for("/".join(parts)))

    def uri_for(self, key: str = "") -> str:
        key = key.strip("/")
        if not key:
            return self.uri
        return f"{self.uri.rstrip('/')}/{key}"

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    # Storage travels to Ray workers inside train-loop configs; the boto3 client does not.
    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"])

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Raise a clear StorageError within seconds unless storage is usable."""
        if not self.is_s3:
            try:
                self.local_root.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=self.local_root, prefix=".probe-"):
                    pass
            except OSError as error:
                raise StorageError(
                    f"local storage {self.uri} is not writable ({error.strerror}); "
                    f"pass a writable directory with --storage or ${ENV_STORAGE}"
                ) from None
            return
        try:
            self._s3_call(lambda c: c.head_bucket(Bucket=self.bucket), key="")
        except NotFoundError:  # HEAD has no body, so S3 says only "404"
            raise StorageError(
                f"bucket {self.bucket!r} does not exist at {s3_endpoint() or 'AWS S3'}: create it "
                "first (`raylane storage up` creates one locally) or fix the storage URI"
            ) from None

    # ------------------------------------------------------------------ objects

    def read_bytes(self, key: str) -> bytes:
        if not self.is_s3:
            try:
                return self._local(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise NotFoundError(f"{self.uri_for(key)} does not exist") from None
        response = self._s3_call(
            lambda c: c.get_object(Bucket=self.bucket, Key=self._key(key)), key=key
        )
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        if not self.is_s3:
            path = self._local(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(path, data)
            os.replace(tmp, path)
            return
        self._s3_call(
            lambda c: c.put_object(Bucket=self.bucket, Key=self._key(key), Body=data), key=key
        )

    def read_json(self, key: str) -> Any:
        raw = self.read_bytes(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise StorageError(f"{self.uri_for(key)} is not valid JSON: {error}") from None

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, _dump_json(value))

    def exists(self, key: str) -> bool:
        if not self.is_s3:
            return self._local(key).is_file()
        try:
            self._s3_call(lambda c: c.head_object(Bucket=self.bucket, Key=self._key(key)), key=key)
            return True
        except NotFoundError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        """All keys below `prefix`, recursively, relative to the storage root, sorted."""
        prefix = prefix.strip("/")
        if not self.is_s3:
            base = self._local(prefix)
            if not base.is_dir():
                return []
            keys = (
                p.relative_to(self.local_root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not _is_internal(p.name)
            )
            return sorted(keys)
        full = self._dir_key(prefix)
        keys = []
        for page in self._paginate(full, delimiter=None):
            # Keys ending in '/' are directory markers that pyarrow writes; not objects.
            keys += [
                self._rel(obj["Key"])
                for obj in page.get("Contents", [])
                if not obj["Key"].endswith("/")
            ]
        return sorted(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-directories (common prefixes) of `prefix`, sorted."""
        prefix = prefix.strip("/")
        if not self.is_s3:
            base = self._local(prefix)
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        full = self._dir_key(prefix)
        names = []
        for page in self._paginate(full, delimiter="/"):
            names += [p["Prefix"][len(full) :].strip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def delete(self, key: str) -> None:
        """Delete one object, or everything below `key` when it names a directory/prefix."""
        if not self.is_s3:
            path = self._local(key)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            return
        keys = [self._key(k) for k in self.list(key)] or [self._key(key)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._s3_call(
                lambda c, b=batch: c.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
                ),
                key=key,
            )

    # ------------------------------------------------------------------ conditional writes

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists. True when this call created it."""
        if not self.is_s3:
            path = self._local(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """Content plus an opaque version token for `compare_and_swap`."""
        if not self.is_s3:
            data = self.read_bytes(key)
            return data, hashlib.sha256(data).hexdigest()
        response = self._s3_call(
            lambda c: c.get_object(Bucket=self.bucket, Key=self._key(key)), key=key
        )
        return response["Body"].read(), response["ETag"]

    def compare_and_swap(self, key: str, data: bytes, expected: str | None) -> bool:
        """Write `data` only if `key` is still at version `expected` (None: must not exist).

        True when this call won; False when another writer changed `key` first.
        """
        if expected is None:
            return self.put_if_absent(key, data)
        if self.is_s3:
            return self._conditional_put(key, data, IfMatch=expected)
        path = self._local(key)
        with _file_lock(path.with_name(f".{path.name}.lock")):
            try:
                current = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                return False
            if current != expected:
                return False
            os.replace(_write_temp(path, data), path)
            return True

    # ------------------------------------------------------------------ directories

    def upload_dir(self, local_dir: str | Path, key: str, *, last: tuple[str, ...] = ()) -> None:
        """Copy a local directory below `key`; files named in `last` are written after the rest,
        so a reader that waits for them never sees a partial directory."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        first = [p for p in files if p.name not in last]
        final = [p for p in files if p.name in last]
        for group in (first, final):
            self._parallel(
                lambda p: self._upload_file(p, f"{key}/{p.relative_to(local_dir).as_posix()}"),
                group,
            )

    def download_dir(self, key: str, local_dir: str | Path) -> Path:
        """Copy everything below `key` into `local_dir`; raise NotFoundError if there is none."""
        local_dir = Path(local_dir)
        keys = self.list(key)
        if not keys:
            raise NotFoundError(f"{self.uri_for(key)} is empty or does not exist")
        skip = len(key.strip("/") + "/") if key.strip("/") else 0
        self._parallel(lambda k: self._download_file(k, local_dir / k[skip:]), keys)
        return local_dir

    def arrow_filesystem(self):
        """(pyarrow filesystem, root path) for Ray Train/Tune `storage_path` and Ray Data."""
        import pyarrow.fs as pafs

        if not self.is_s3:
            self.local_root.mkdir(parents=True, exist_ok=True)
            return pafs.LocalFileSystem(), str(self.local_root)
        options: dict[str, Any] = {
            "region": region(),
            "connect_timeout": CONNECT_TIMEOUT_S,
            "request_timeout": READ_TIMEOUT_S,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        }
        endpoint = s3_endpoint()
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["endpoint_override"] = parsed.netloc
            options["scheme"] = parsed.scheme
        return pafs.S3FileSystem(**options), self._arrow_root

    @property
    def _arrow_root(self) -> str:
        """Root path inside `arrow_filesystem()`, without building a filesystem."""
        if not self.is_s3:
            return str(self.local_root)
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def arrow_path(self, key: str) -> str:
        """A key as a path inside `arrow_filesystem()`."""
        root = self._arrow_root
        return f"{root}/{key.strip('/')}" if key.strip("/") else root

    def key_from_arrow_path(self, path: str) -> str:
        """Inverse of `arrow_path` (Tune records checkpoint paths without a scheme)."""
        root = self._arrow_root
        path = path.removeprefix("s3://")
        if not path.startswith(root):
            raise StorageError(f"{path} is not inside storage {self.uri}")
        return path[len(root) :].strip("/")

    # ------------------------------------------------------------------ internals

    def _local(self, key: str) -> Path:
        key = key.strip("/")
        if ".." in Path(key).parts:
            raise StorageError(f"key {key!r} may not contain '..'")
        return self.local_root / key if key else self.local_root

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _dir_key(self, prefix: str) -> str:
        """The S3 key prefix that lists the contents of directory `prefix`."""
        full = self._key(prefix)
        return f"{full}/" if full else ""

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @property
    def client(self):
        if self._client is None:
            self._client = make_client()
        return self._client

    def _paginate(self, prefix: str, delimiter: str | None):
        where = self._rel(prefix.rstrip("/")) if prefix else ""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        pages = self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        iterator = iter(pages)
        while True:
            page = self._s3_call(lambda _c: next(iterator, None), key=where)
            if page is None:
                return
            yield page

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return True
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the condition failed; 409: a concurrent conditional write is in flight.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return False
            raise self._translate(error, key) from None
        except Exception as error:  # connection trouble and the like
            raise self._translate(error, key) from None

    def _upload_file(self, path: Path, key: str) -> None:
        if not self.is_s3:
            target = self._local(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            return
        self._s3_call(
            lambda c: c.upload_file(
                str(path), self.bucket, self._key(key), Config=transfer_config()
            ),
            key=key,
        )

    def _download_file(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.is_s3:
            shutil.copyfile(self._local(key), target)
            return
        self._s3_call(
            lambda c: c.download_file(
                self.bucket, self._key(key), str(target), Config=transfer_config()
            ),
            key=key,
        )

    def _parallel(self, fn, items) -> None:
        items = list(items)
        if len(items) <= 1 or not self.is_s3:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            list(pool.map(fn, items))

    def _s3_call(self, fn, *, key: str):
        try:
            return fn(self.client)
        except StorageError:
            raise
        except Exception as error:
            raise self._translate(error, key) from None

    def _translate(self, error: Exception, key: str) -> StorageError:
        return translate_s3_error(error, bucket=self.bucket, where=self.uri_for(key))


def _parse(uri: str) -> tuple[str, str | None, str, Path | None]:
    """-> (canonical uri, bucket, prefix, local root). Raises StorageError for bad URIs."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError("storage URI is empty: pass s3://bucket/prefix or a local directory")
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        root = Path(uri).expanduser().resolve()
        return str(root), None, "", root
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
    return canonical, bucket, prefix, None


def _valid_bucket(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 3 <= len(name) <= 63 and set(name) <= allowed and name[0].isalnum()


def _is_internal(name: str) -> bool:
    """Temporary and lock files of in-flight local writes, never listed."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".lock"))


def _dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _write_temp(path: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

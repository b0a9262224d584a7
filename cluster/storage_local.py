"""The local-directory backend of Storage (cluster/storage.py): the embedded default.

    backend = LocalBackend(Path("./artifacts").resolve())

Keys are '/'-separated paths below the root. A write becomes visible whole: it goes to a
temporary file beside its target and is renamed over it (`os.replace` is atomic on POSIX).
`put_if_absent` is a hard link of the temporary file (fails if the name exists); a
compare-and-swap holds an flock on a lock file beside the key while it compares and renames.
Temporary and lock files are never listed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cluster.errors import NotFoundError, StorageError


class LocalBackend:
    """Objects as files below `root`."""

    def __init__(self, root: Path):
        self.root = root

    def check(self, env_name: str) -> None:
        """Writable (or creatable) without creating anything."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"local storage {self.root} is not a writable directory; pass a writable directory "
                f"with --storage or ${env_name}"
            )

    # ------------------------------------------------------------------ objects

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.path(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(_write_temp(path, data), path)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not _is_internal(p.name)
        )

    def list_dirs(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ conditional writes

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def compare_and_swap(self, key: str, data: bytes, expected: str) -> bool:
        path = self.path(key)
        with _file_lock(path.with_name(f".{path.name}.lock")):
            try:
                current = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                return False
            if current != expected:
                return False
            os.replace(_write_temp(path, data), path)
            return True

    # ------------------------------------------------------------------ files

    def upload_file(self, source: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def download_file(self, key: str, target: Path) -> None:
        shutil.copyfile(self.path(key), target)

    def map_parallel(self, fn, items: list) -> None:
        for item in items:  # copies on one disk gain nothing from threads
            fn(item)

    def arrow_filesystem(self):
        import pyarrow.fs as pafs

        if not self.root.exists():  # a local Parquet *file* is a valid data.path: leave it be
            self.root.mkdir(parents=True)
        return pafs.LocalFileSystem()

    @property
    def arrow_root(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        key = key.strip("/")
        if ".." in Path(key).parts:
            raise StorageError(f"key {key!r} may not contain '..'")
        return self.root / key if key else self.root


def _is_internal(name: str) -> bool:
    """Temporary and lock files of in-flight local writes, never listed."""
    return name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".lock"))


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

"""Error types that users see. Each message names what is wrong and how to fix it.

Every command catches `RaylaneError` at the top and prints its message without a traceback
(`run_cli`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class RaylaneError(Exception):
    """A user-facing failure: bad config, bad data, bad request, storage trouble."""


class ConfigError(RaylaneError):
    """A configuration field has a wrong name or value."""


class DataError(RaylaneError):
    """A dataset is missing, malformed, or does not match the configuration."""


class StorageError(RaylaneError):
    """Storage is unreachable, misconfigured, or refused the request."""


class StorageUnavailable(StorageError):
    """Storage did not answer (unreachable, timed out, overloaded): it may pass, so callers
    retry it a few times before giving up (cluster/storage_s3.py)."""


class NotFoundError(StorageError):
    """An object, model, version or alias does not exist."""


class ConflictError(RaylaneError):
    """A concurrent writer won a compare-and-swap; re-read and try again."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None):
    """Run a command's `main`, printing user errors as one line instead of a traceback."""
    try:
        code = main(argv)
    except RaylaneError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def first_line(error: BaseException, width: int = 300) -> str:
    """`Type: last line of the message`, the part of a remote traceback that names the cause."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:width] if lines else ''}".rstrip(": ")

"""The S3 backend of Storage (cluster/storage.py): AWS S3, MinIO, SeaweedFS.

    backend = S3Backend("raylane", "dev")      # bucket, key prefix

Settings come only from the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_PROFILE and the shared credentials
file); nothing here prints a secret. A PutObject is atomic, so every write becomes visible
whole; `put_if_absent` and `compare_and_swap` are S3's conditional writes (`If-None-Match: *`,
`If-Match: <etag>`).

Only errors raised by boto3, botocore and pyarrow become a StorageError that says what to fix
(`translate_s3_error`); any other exception is a bug and keeps its traceback. An endpoint that
does not answer (connection refused or reset, a timeout, a 5xx, throttling) is a
`StorageUnavailable`: every idempotent request is retried with backoff for up to
$RAYLANE_STORAGE_RETRY_S seconds (30 by default) before that error reaches the caller.
Conditional writes are not retried (a lost answer would turn a win into a conflict), nor is
`check`, which must fail within seconds.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cluster.errors import NotFoundError, StorageError, StorageUnavailable

# One request fails within seconds on an unreachable endpoint; `retry_delays` decides how long
# raylane keeps trying.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 20.0
RETRY_ENV, DEFAULT_RETRY_S = "RAYLANE_STORAGE_RETRY_S", 30.0
# S3 error codes that say "not now" rather than "no": worth a retry.
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                   "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}  # fmt: skip


def s3_endpoint() -> str | None:
    """The custom S3 endpoint from the environment, if any (MinIO, SeaweedFS, ...)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def retry_delays():
    """Seconds to wait before each retry of an unavailable endpoint: 0.5 doubling up to 8, until
    $RAYLANE_STORAGE_RETRY_S (default 30) seconds of waiting are used up."""
    raw = os.environ.get(RETRY_ENV) or DEFAULT_RETRY_S
    try:
        budget = float(raw)
    except ValueError:
        raise StorageError(f"{RETRY_ENV}={raw!r} is not a number of seconds") from None
    delay, spent = 0.5, 0.0
    while spent + delay <= budget:
        yield delay
        spent, delay = spent + delay, min(delay * 2, 8.0)


def translate_s3_error(error: Exception, *, bucket: str | None, where: str) -> StorageError:
    """Turn a boto3/botocore exception into a StorageError that says what to fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    endpoint = s3_endpoint() or "AWS S3"
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        )
    if isinstance(error, BotoConnectionError | HTTPClientError):  # refused, reset, timed out
        return StorageUnavailable(
            f"cannot reach the S3 endpoint {endpoint} for {where}; is the server running? "
            "Check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (`raylane storage up` starts a local one)"
        )
    if isinstance(error, S3UploadFailedError):
        # upload_file wraps the real ClientError's text; classify by that text.
        text = str(error)
        for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket",
                     *sorted(TRANSIENT_CODES)):  # fmt: skip
            if code in text:
                return _client_error(code, 0, bucket=bucket, where=where, endpoint=endpoint)
        return StorageError(f"upload to {where} failed: {text}")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _client_error(code, status, bucket=bucket, where=where, endpoint=endpoint)
    return StorageError(f"S3 request for {where} failed: {type(error).__name__}: {error}")


def _client_error(code: str, status: int, *, bucket, where, endpoint) -> StorageError:
    if code in TRANSIENT_CODES or status >= 500:
        return StorageUnavailable(
            f"S3 at {endpoint} is unavailable or overloaded ({code or status}) for {where}; "
            "try again later or check the server"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return StorageError(
            f"S3 at {endpoint} rejected the credentials ({code}) for {where}: check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile AWS_PROFILE names"
        )
    if code in ("AccessDenied", "Forbidden") or status == 403:
        return StorageError(
            f"access denied to {where} at {endpoint}: the credentials are wrong or lack "
            "permission; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile "
            "AWS_PROFILE names) and the bucket policy"
        )
    if code == "NoSuchBucket":
        return StorageError(
            f"bucket {bucket!r} does not exist at {endpoint}: create it first "
            "(`raylane storage up` creates one locally) or fix the storage URI"
        )
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return NotFoundError(f"{where} does not exist")
    return StorageError(f"S3 at {endpoint} refused the request for {where}: {code} ({status})")


def make_client():
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=32,
        # SeaweedFS and MinIO want path-style addressing; AWS accepts it too.
        s3={"addressing_style": "path"} if s3_endpoint() else {},
    )
    session = boto3.session.Session()
    return session.client("s3", region_name=region(), endpoint_url=s3_endpoint(), config=config)


def transfer_config():
    """Parts of 8 MiB, 10 at a time (boto3's defaults): a 34 MB model file goes up and down as
    5 parallel parts. A 64 MiB threshold sent it as one stream: 0.72-0.77x of boto3 defaults
    for a 100 MB checkpoint (bench/storage.py)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20, max_concurrency=10
    )


def _storage_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean storage trouble, not a bug in our code."""
    import pyarrow
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error, pyarrow.ArrowException)


class S3Backend:
    """Objects in `bucket` below `prefix`, through one boto3 client per process."""

    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = make_client()
        return self._client

    def check(self, env_name: str) -> None:
        try:
            self._call(lambda c: c.head_bucket(Bucket=self.bucket), key="", retry=False)
        except NotFoundError:  # HEAD has no body, so S3 says only "404"
            raise StorageError(
                f"bucket {self.bucket!r} does not exist at {s3_endpoint() or 'AWS S3'}: create it "
                "first (`raylane storage up` creates one locally) or fix the storage URI"
            ) from None

    # ------------------------------------------------------------------ objects

    def read_bytes(self, key: str) -> bytes:
        response = self._call(
            lambda c: c.get_object(Bucket=self.bucket, Key=self.full_key(key)), key=key
        )
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(
            lambda c: c.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data),
            key=key,
        )

    def exists(self, key: str) -> bool:
        try:
            self._call(
                lambda c: c.head_object(Bucket=self.bucket, Key=self.full_key(key)),
                key=key,
            )
            return True
        except NotFoundError:
            return False

    def list(self, prefix: str) -> list[str]:
        keys = []
        for page in self._paginate(self._dir_key(prefix), delimiter=None):
            # Keys ending in '/' are directory markers that pyarrow writes; not objects.
            keys += [
                self._relative(obj["Key"])
                for obj in page.get("Contents", [])
                if not obj["Key"].endswith("/")
            ]
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._dir_key(prefix)
        names = []
        for page in self._paginate(full, delimiter="/"):
            names += [p["Prefix"][len(full) :].strip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def delete(self, key: str) -> None:
        keys = [self.full_key(k) for k in self.list(key)] or [self.full_key(key)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(
                lambda c, b=batch: c.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
                ),
                key=key,
            )

    # ------------------------------------------------------------------ conditional writes

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        response = self._call(
            lambda c: c.get_object(Bucket=self.bucket, Key=self.full_key(key)), key=key
        )
        return response["Body"].read(), response["ETag"]

    def compare_and_swap(self, key: str, data: bytes, expected: str) -> bool:
        return self._conditional_put(key, data, IfMatch=expected)

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call(
                lambda c: c.put_object(
                    Bucket=self.bucket, Key=self.full_key(key), Body=data, **condition
                ),
                key=key,
                translate=False,
            )
            return True
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the condition failed; 409: a concurrent conditional write is in flight.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise translate_s3_error(error, bucket=self.bucket, where=self.uri(key)) from None
        except _storage_errors() as error:
            raise translate_s3_error(error, bucket=self.bucket, where=self.uri(key)) from None

    # ------------------------------------------------------------------ files

    def upload_file(self, source: Path, key: str) -> None:
        self._call(
            lambda c: c.upload_file(
                str(source), self.bucket, self.full_key(key), Config=transfer_config()
            ),
            key=key,
        )

    def download_file(self, key: str, target: Path) -> None:
        self._call(
            lambda c: c.download_file(
                self.bucket, self.full_key(key), str(target), Config=transfer_config()
            ),
            key=key,
        )

    def map_parallel(self, fn, items: list) -> None:
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            list(pool.map(fn, items))

    def arrow_filesystem(self):
        """Built without explicit keys: shipped to another node, it picks the credentials up
        from that node's environment or credentials file instead of carrying them."""
        import pyarrow.fs as pafs

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
        return pafs.S3FileSystem(**options)

    @property
    def arrow_root(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    # ------------------------------------------------------------------ internals

    def full_key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _dir_key(self, prefix: str) -> str:
        """The S3 key prefix that lists the contents of directory `prefix`."""
        full = self.full_key(prefix.strip("/"))
        return f"{full}/" if full else ""

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _paginate(self, prefix: str, delimiter: str | None):
        """Listing pages, each fetched (and retried) on its own by its continuation token."""
        where = self._relative(prefix.rstrip("/")) if prefix else ""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = self._call(lambda c, k=dict(kwargs): c.list_objects_v2(**k), key=where)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}".rstrip("/")

    def _call(self, fn, *, key: str, translate: bool = True, retry: bool = True):
        """fn(client), its errors translated; retried with backoff while storage is unavailable."""
        if not translate:
            return fn(self.client)
        delays, waited = retry_delays() if retry else iter(()), 0.0
        while True:
            try:
                return fn(self.client)
            except _storage_errors() as error:
                failure = translate_s3_error(error, bucket=self.bucket, where=self.uri(key))
            delay = next(delays, None) if isinstance(failure, StorageUnavailable) else None
            if delay is None:
                if waited:
                    raise type(failure)(f"{failure} (gave up after retrying for {waited:.1f} s)")
                raise failure
            time.sleep(delay)
            waited += delay

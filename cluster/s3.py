"""S3 plumbing behind Storage: the client, transfer settings, and errors that say what to fix.

Settings come only from the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, profiles); nothing here prints a secret.
"""

from __future__ import annotations

import os

from cluster.errors import NotFoundError, StorageError

# Fail within seconds on an unreachable endpoint instead of hanging in retries.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 20.0


def s3_endpoint() -> str | None:
    """The custom S3 endpoint from the environment, if any (MinIO, SeaweedFS, ...)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def translate_s3_error(error: Exception, *, bucket: str | None, where: str) -> StorageError:
    """Turn a boto3/botocore exception into a StorageError that says what to fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = s3_endpoint() or "AWS S3"
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return StorageError(
            f"cannot reach the S3 endpoint {endpoint} for {where}; is the server running? "
            "Check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (`raylane storage up` starts a local one)"
        )
    if isinstance(error, S3UploadFailedError):
        # upload_file wraps the real ClientError's text; classify by that text.
        text = str(error)
        for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket"):
            if code in text:
                return _client_error(code, 0, bucket=bucket, where=where, endpoint=endpoint)
        return StorageError(f"upload to {where} failed: {text}")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _client_error(code, status, bucket=bucket, where=where, endpoint=endpoint)
    return StorageError(f"S3 request for {where} failed: {type(error).__name__}: {error}")


def _client_error(code: str, status: int, *, bucket, where, endpoint) -> StorageError:
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return StorageError(
            f"S3 at {endpoint} rejected the credentials ({code}) for {where}: check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if code in ("AccessDenied", "Forbidden") or status == 403:
        return StorageError(
            f"access denied to {where} at {endpoint}: the credentials are wrong or lack "
            "permission; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
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

"""S3 credentials in an AWS shared credentials file, never in an environment that Ray copies.

    from cluster.credentials import move_secrets_to_file, write_profile
    move_secrets_to_file()      # AWS_* secrets of this process -> a private 0600 file + AWS_PROFILE
    write_profile(path, "raylane-local", {"aws_access_key_id": ..., "aws_secret_access_key": ...})

Why: Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
AWS_SECURITY_TOKEN from the driver's environment into every trial actor's runtime_env
(`ray/tune/execution/class_cache.py`, ENV_VARS_TO_PROPAGATE), where the dashboard's state API
and `runtime_env_agent.log` show them to anyone who can read either; a local Ray's processes
inherit the driver's environment. boto3 and pyarrow's S3 filesystem both read the shared
credentials file named by AWS_SHARED_CREDENTIALS_FILE, in the profile named by AWS_PROFILE
(checked against SeaweedFS: a wrong profile is refused), and those two variables carry no secret.
So `cluster.runtime.connect` moves any secret out of the environment before Ray starts or Tune
builds an actor, and `raylane storage up` keeps the local server's keys in such a file.
"""

from __future__ import annotations

import atexit
import configparser
import io
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

# Every variable botocore's and the AWS C++ SDK's environment providers read a secret from.
SECRET_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)
MOVED_PROFILE = "raylane-moved-from-env"


def write_profile(path: str | Path, profile: str, keys: dict[str, str]) -> Path:
    """Write `keys` (aws_access_key_id, aws_secret_access_key[, aws_session_token]) as the only
    profile of the credentials file `path`, readable by its owner alone from the first byte."""
    parser = configparser.ConfigParser(interpolation=None)  # a '%' in a secret stays itself
    parser[profile] = keys
    text = io.StringIO()
    parser.write(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as file:
        file.write(text.getvalue())
    return path


def read_profile(path: str | Path, profile: str) -> dict[str, str] | None:
    """The keys of `profile` in the credentials file `path`, or None if either is missing."""
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path) or not parser.has_section(profile):
        return None
    return dict(parser[profile])


def profile_env(path: str | Path, profile: str) -> dict[str, str]:
    """The environment that points boto3 and pyarrow at `profile` in `path`: no secret in it."""
    return {"AWS_SHARED_CREDENTIALS_FILE": str(Path(path).resolve()), "AWS_PROFILE": profile}


def move_secrets_to_file(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Move the AWS secrets in `environ` into a 0600 credentials file in a private temporary
    directory (removed when this process exits), and point AWS_SHARED_CREDENTIALS_FILE and
    AWS_PROFILE at it. Clients built afterwards see the same keys as before: environment keys
    took precedence over any profile, and now they are the profile. Returns the file, or None
    when the environment held no keys (a half set, which no AWS client would have used, is
    dropped all the same so that it cannot travel)."""
    found = {name: environ.pop(name) for name in SECRET_VARS if name in environ}
    if not (found.get("AWS_ACCESS_KEY_ID") and found.get("AWS_SECRET_ACCESS_KEY")):
        return None
    keys = {
        "aws_access_key_id": found["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": found["AWS_SECRET_ACCESS_KEY"],
    }
    token = found.get("AWS_SESSION_TOKEN") or found.get("AWS_SECURITY_TOKEN")
    if token:
        keys["aws_session_token"] = token
    directory = tempfile.mkdtemp(prefix="raylane-aws-")  # mode 0700
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = write_profile(Path(directory) / "credentials", MOVED_PROFILE, keys)
    environ.update(profile_env(path, MOVED_PROFILE))
    return path

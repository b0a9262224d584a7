"""S3 keys leave the environment for a private credentials file that boto3 reads the same way
(cluster/credentials.py). Run: pytest tests/unit/test_credentials.py"""

from __future__ import annotations

import os
import shutil
import stat

import boto3
import pytest

from cluster.credentials import SECRET_VARS, move_secrets_to_file, read_profile, write_profile

SECRET = "s3cr%t-" + os.urandom(8).hex()  # a '%' that configparser would interpolate


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """This process's environment without any AWS setting of the developer's own."""
    for name in [*SECRET_VARS, "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    return os.environ


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_move_to_a_private_profile_that_boto3_reads_as_before(environ, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMOVED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-123")

    path = move_secrets_to_file()

    assert not any(SECRET in value or "token-123" in value for value in environ.values())
    assert not set(SECRET_VARS) & set(environ)
    assert environ["AWS_SHARED_CREDENTIALS_FILE"] == str(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    credentials = boto3.session.Session().get_credentials()
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKIDMOVED",
        SECRET,
        "token-123",
    )
    shutil.rmtree(path.parent)  # at exit otherwise, which pytest's os._exit skips


def test_moved_keys_win_over_a_profile_that_was_set_before(environ, monkeypatch, tmp_path):
    """Keys in the environment took precedence over AWS_PROFILE, so after the move they must."""
    other = write_profile(
        tmp_path / "credentials",
        "other",
        {
            "aws_access_key_id": "AKIDOTHER",
            "aws_secret_access_key": "other-secret",
        },
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(other))
    monkeypatch.setenv("AWS_PROFILE", "other")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMOVED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)

    path = move_secrets_to_file()

    assert boto3.session.Session().get_credentials().secret_key == SECRET
    shutil.rmtree(path.parent)


def test_half_a_key_pair_is_dropped_and_the_profile_kept(environ, monkeypatch, tmp_path):
    profile = write_profile(
        tmp_path / "credentials",
        "kept",
        {
            "aws_access_key_id": "AKIDKEPT",
            "aws_secret_access_key": "kept-secret",
        },
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(profile))
    monkeypatch.setenv("AWS_PROFILE", "kept")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # no key id: no AWS client used it

    assert move_secrets_to_file() is None

    assert "AWS_SECRET_ACCESS_KEY" not in environ
    assert environ["AWS_PROFILE"] == "kept"
    assert boto3.session.Session().get_credentials().secret_key == "kept-secret"


def test_nothing_to_move_changes_nothing(environ):
    before = dict(environ)
    assert move_secrets_to_file() is None
    assert dict(environ) == before


def test_a_profile_file_is_owner_only_even_when_it_existed_wider(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("old")
    path.chmod(0o644)
    keys = {"aws_access_key_id": "AKID", "aws_secret_access_key": SECRET}
    write_profile(path, "p", keys)
    assert mode(path) == 0o600
    assert read_profile(path, "p") == keys
    assert read_profile(path, "missing") is None
    assert read_profile(tmp_path / "absent", "p") is None

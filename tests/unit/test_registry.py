"""The model registry on a local directory: references (pure), then the whole contract
(tests/registry_contract.py; the same tests run on S3 in tests/integration/test_registry_s3.py).
"""

from __future__ import annotations

import pytest
from registry_contract import *  # noqa: F403  (the contract's tests, collected here)

from cluster.errors import ConfigError
from cluster.registry import ModelRef


@pytest.fixture
def storage(local_storage):
    return local_storage


# ---------------------------------------------------------------------- refs (pure)


@pytest.mark.parametrize(
    "text, ref",
    [
        ("digits", ModelRef("digits")),
        ("digits@production", ModelRef("digits", alias="production")),
        ("digits-cnn.v2:12", ModelRef("digits-cnn.v2", version=12)),
    ],
)
def test_model_refs_parse_and_print(text, ref):
    assert ModelRef.parse(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize("text", ["", "Digits", "digits:", "digits:x", "a@b:3", "d@Prod", "-x"])
def test_malformed_refs_show_the_accepted_forms(text):
    with pytest.raises(ConfigError, match="NAME, NAME@ALIAS or NAME:VERSION"):
        ModelRef.parse(text)

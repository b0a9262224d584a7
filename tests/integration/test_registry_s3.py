"""The model registry's contract (tests/registry_contract.py) on a real SeaweedFS."""

from __future__ import annotations

import pytest
from registry_contract import *  # noqa: F403  (the contract's tests, collected here)

pytestmark = pytest.mark.integration


@pytest.fixture
def storage(s3_storage):
    return s3_storage

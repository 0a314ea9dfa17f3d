"""Each workspace test gets a bucket of its own on the shared S3 server (``s3_endpoint``,
tests/conftest.py), so tests never see each other's objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.store.objects import ObjectStore
from tests.workspaces.builders import make_store


@pytest.fixture
def store(s3_endpoint: str) -> Iterator[ObjectStore]:
    """An ``ObjectStore`` on a fresh, empty bucket."""
    created = make_store(s3_endpoint)
    created.ensure_bucket()
    yield created
    created.close()

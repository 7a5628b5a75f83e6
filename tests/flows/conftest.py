"""Every flow test samples on the session's one Dask cluster (`shared_dask_cluster` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _flows_use_the_shared_cluster(shared_dask_cluster):
    return shared_dask_cluster

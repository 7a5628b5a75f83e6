"""One Dask cluster for every flow test, reached the way an external cluster is (`$MOTFM_DASK_SCHEDULER`): a
LocalCluster per sampling stage costs ~10 s of worker start-up, and the flow tests run ~20 stages. The per-stage
LocalCluster is exercised by tests/core/test_distributed.py and tests/deployments."""

from __future__ import annotations

import os

import pytest

from motfm_core.distributed import SCHEDULER_ENV, dask_client


@pytest.fixture(scope="session", autouse=True)
def shared_dask_cluster():
    with dask_client(workers=1) as client:
        before = os.environ.get(SCHEDULER_ENV)
        os.environ[SCHEDULER_ENV] = client.scheduler.address
        try:
            yield client.scheduler.address
        finally:
            if before is None:
                os.environ.pop(SCHEDULER_ENV, None)
            else:
                os.environ[SCHEDULER_ENV] = before

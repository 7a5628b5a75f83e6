"""Shared fixtures: tiny phantom datasets, a trained tiny checkpoint and one Dask cluster, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
torch.set_num_threads(2)

TINY_MODEL = {"channels": (16, 16), "attention_levels": (False, False), "norm_num_groups": 8,
              "num_head_channels": 8, "num_res_blocks": 1}


@pytest.fixture(scope="session")
def phantom_store(tmp_path_factory):
    from motfm_core.config import DataConfig
    from motfm_core.data import ingest

    path = tmp_path_factory.mktemp("data") / "dataset.zarr"
    return ingest(DataConfig(source="phantom:12", image_size=16), path)


@pytest.fixture(scope="session")
def tiny_checkpoint(phantom_store, tmp_path_factory):
    from motfm_core.config import ModelConfig, TrainConfig
    from motfm_core.model.training import train_flow_matching

    model = ModelConfig(image_size=16, num_classes=3, **TINY_MODEL)
    train = TrainConfig(steps=30, batch_size=8, warmup_steps=5, checkpoint_every=10)
    return train_flow_matching(phantom_store, model, train, tmp_path_factory.mktemp("ckpt"), device="cpu")


@pytest.fixture(scope="session")
def ddpm_checkpoint(phantom_store, tmp_path_factory):
    """The same-backbone DDPM baseline (epsilon prediction), tiny."""
    from motfm_core.config import ModelConfig, TrainConfig
    from motfm_core.model.training import train_flow_matching

    cfg = ModelConfig(image_size=16, num_classes=3, prediction="epsilon", **TINY_MODEL)
    return train_flow_matching(phantom_store, cfg, TrainConfig(steps=20, batch_size=8, warmup_steps=5),
                               tmp_path_factory.mktemp("ddpm"), device="cpu")


@pytest.fixture(scope="session")
def shared_dask_cluster():
    """One Dask LocalCluster (one worker) for the session, its address in $MOTFM_DASK_SCHEDULER while it lives, so
    that flows reach it the way they reach an external cluster: a LocalCluster costs ~10 s of worker start-up
    (the worker imports torch and MONAI), and the flow tests run ~20 sampling stages. The per-stage LocalCluster is
    exercised by tests/core/test_distributed.py and tests/deployments."""
    from motfm_core.model.distributed import SCHEDULER_ENV, dask_client

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

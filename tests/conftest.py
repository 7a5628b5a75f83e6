"""Shared fixtures: tiny phantom datasets and a trained tiny checkpoint, built once per session."""

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
    from motfm_core.training import train_flow_matching

    model = ModelConfig(image_size=16, num_classes=3, **TINY_MODEL)
    train = TrainConfig(steps=30, batch_size=8, warmup_steps=5, checkpoint_every=10)
    return train_flow_matching(phantom_store, model, train, tmp_path_factory.mktemp("ckpt"), device="cpu")

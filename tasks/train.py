"""Train task: real dataset store -> flow-matching checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from motfm_core.config import ModelConfig, TrainConfig, from_dict
from motfm_core.data import open_store
from motfm_core.training import train_flow_matching
from tasks import BACKOFF, GPU_TAG, transient


@task(name="train", tags=[GPU_TAG], retries=2, retry_delay_seconds=BACKOFF, retry_condition_fn=transient)
def train_task(data_path: str, model: dict, train: dict, run_dir: str) -> str:
    """Train (or resume, or reuse) the model; channels and classes come from the store. Returns model.pt."""
    logger = get_run_logger()
    root = open_store(data_path)
    geometry = {"in_channels": root["images"].shape[1], "num_classes": len(root.attrs["class_names"])}
    if model.get("mask_conditioning") == "auto":
        model = {**model, "mask_conditioning": "concat" if "masks" in root.array_keys() else "none"}
        logger.info("train: mask_conditioning auto -> %s", model["mask_conditioning"])
    if model.get("mask_conditioning", "none") != "none":
        if "masks" not in root.array_keys():
            raise ValueError(f"{data_path}: model.mask_conditioning needs a dataset with masks; this one has none")
        geometry["mask_classes"] = len(root.attrs.get("mask_names", [])) or int(root["masks"][:].max()) + 1
    model_cfg = from_dict(ModelConfig, {**model, **geometry}, "model")
    ckpt = train_flow_matching(data_path, model_cfg, from_dict(TrainConfig, train, "train"),
                               Path(run_dir) / "checkpoints", progress=logger.info)
    return str(ckpt)

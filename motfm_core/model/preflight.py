"""The refusals a later stage would make, made before any work from the settings and cheap reads alone (a file's
existence, a CSV header, the machine's GPU count): a run that cannot finish fails in seconds, not after hours of
training. The memory plan (`model.memory.plan_run`) is the other half of the pre-start check."""

from __future__ import annotations

from motfm_core.config import PipelineConfig
from motfm_core.data.brain import check_blocks
from motfm_core.data.ingest import check_source, source_has_masks
from motfm_core.errors import BadInput
from motfm_core.model.ddp import check_devices
from motfm_core.model.distributed import check_scheduler

__all__ = ["check_run"]


def check_run(cfg: PipelineConfig, enhance: bool = False) -> None:
    """Refuse (BadInput) a run that a later stage would refuse: its data source, the demo set's 3D blocks, mask
    settings on data without masks, enhancement of volumes, a Dask scheduler this machine does not allow, more
    training devices than GPUs. The config's own cross-section rules ran at load (`PipelineConfig`)."""
    data = cfg.data
    check_source(data.source)
    if data.source == "brain-mri" and data.spatial_dims == 3:
        check_blocks(data)
    if source_has_masks(data.source) is False:
        if cfg.model.mask_conditioning in ("concat", "controlnet"):
            raise BadInput(f"model.mask_conditioning={cfg.model.mask_conditioning!r} needs a dataset with masks, and "
                           f"{data.source} has none (no mask column); use model.mask_conditioning='auto' or 'none'")
        if cfg.sample.mask_source != "auto":
            raise BadInput(f"sample.mask_source={cfg.sample.mask_source!r} needs a dataset with masks, and "
                           f"{data.source} has none (no mask column); leave sample.mask_source='auto'")
    if enhance and data.spatial_dims == 3:
        raise BadInput("--enhance (denoise, superres) trains on 2D images only, and data.spatial_dims=3; drop "
                       "--enhance or run it on a 2D dataset")
    check_scheduler(cfg.sample.scheduler)
    check_devices(cfg.train.devices)

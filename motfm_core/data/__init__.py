"""Data IO: readers for user formats, the bundled brain-MRI demo set, and Zarr v3 stores."""

from motfm_core.data.ingest import ingest, normalise, patient_split, resize
from motfm_core.data.store import (
    SPLITS,
    create_synthetic_store,
    incomplete_shards,
    load_split,
    open_store,
    publish_latest,
    shard_bounds,
    shard_complete,
    version_for,
    write_dataset,
    write_shard,
)

__all__ = [
    "SPLITS", "create_synthetic_store", "incomplete_shards", "ingest", "load_split", "normalise", "open_store",
    "patient_split", "publish_latest", "resize", "shard_bounds", "shard_complete", "version_for", "write_dataset",
    "write_shard",
]

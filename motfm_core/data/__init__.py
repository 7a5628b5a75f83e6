"""Data IO: readers for user formats, the bundled brain-MRI demo set, and Zarr v3 stores."""

from motfm_core.data.ingest import ingest
from motfm_core.data.preprocess import normalise, patient_split, resize
from motfm_core.data.store import (
    SPLITS,
    completed_shards,
    create_synthetic_store,
    incomplete_shards,
    load_split,
    open_store,
    open_synthetic,
    publish_latest,
    require_complete,
    shard_bounds,
    shard_complete,
    stratified_subset,
    take_rows,
    version_for,
    write_dataset,
    write_shard,
)

__all__ = [
    "SPLITS", "completed_shards", "create_synthetic_store", "incomplete_shards", "ingest", "load_split", "normalise",
    "open_store", "open_synthetic", "patient_split", "publish_latest", "require_complete", "resize", "shard_bounds",
    "shard_complete", "stratified_subset", "take_rows", "version_for", "write_dataset", "write_shard",
]

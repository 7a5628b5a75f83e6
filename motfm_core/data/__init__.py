"""Data IO: readers for user formats, the bundled brain-MRI demo set, the real dataset store, the sharded
synthetic store and its versions."""

from motfm_core.data.ingest import ingest
from motfm_core.data.preprocess import normalise, patient_split, resize
from motfm_core.data.rows import take_rows
from motfm_core.data.store import SPLITS, load_split, open_store, stratified_subset, write_dataset
from motfm_core.data.synthetic import (
    StoreDamaged,
    completed_shards,
    create_synthetic_store,
    damaged_shards,
    incomplete_shards,
    load_synthetic,
    open_synthetic,
    require_complete,
    shard_bounds,
    shard_complete,
    write_shard,
)
from motfm_core.data.versions import hold_version, prune_versions, publish_latest, version_for

__all__ = [
    "SPLITS", "StoreDamaged", "completed_shards", "create_synthetic_store", "damaged_shards", "hold_version",
    "incomplete_shards", "ingest", "load_split", "load_synthetic", "normalise", "open_store", "open_synthetic",
    "patient_split", "prune_versions", "publish_latest", "require_complete", "resize", "shard_bounds",
    "shard_complete", "stratified_subset", "take_rows", "version_for", "write_dataset", "write_shard",
]

"""The evaluation reads the real splits from the store a batch at a time (`store.open_split`), and scores exactly
what it scored with the splits held in memory."""

import dataclasses

import numpy as np
import pytest
import torch

from motfm_core.config import EvalConfig
from motfm_core.data import create_synthetic_store, load_split, write_shard
from motfm_core.data.rows import Rows, largest, take_rows
from motfm_core.data.store import open_split, open_store


def test_rows_slices_and_indexes_like_the_array_it_stands_for(phantom_store):
    root = open_store(phantom_store)
    held = load_split(phantom_store, "test")
    lazy = open_split(phantom_store, "test")
    images = lazy["images"]
    assert isinstance(images, Rows) and images.shape == held["images"].shape and images.ndim == 4
    np.testing.assert_array_equal(images[2:7], held["images"][2:7])
    np.testing.assert_array_equal(images[::3], held["images"][::3])
    np.testing.assert_array_equal(images[4], held["images"][4])
    idx = np.array([5, 1, 1, 0])
    np.testing.assert_array_equal(take_rows(images, idx), held["images"][idx])
    np.testing.assert_array_equal(np.asarray(lazy["masks"][0:3]), held["masks"][0:3])
    assert largest(lazy["masks"]) == held["masks"].max() and largest(root["masks"]) == root["masks"][:].max()
    np.testing.assert_array_equal(lazy["labels"], held["labels"])
    np.testing.assert_array_equal(lazy["group"], held["group"])


def test_the_segmenter_scored_a_batch_at_a_time_scores_as_the_whole_set(phantom_store):
    from motfm_core.evaluation.segmentation import (
        predict_masks,
        score_segmenter,
        segmentation_scores,
        train_segmenter,
    )

    train, test = load_split(phantom_store, "train"), load_split(phantom_store, "test")
    cfg = EvalConfig(seg_steps=3, seg_channels=(8, 16), batch_size=8)
    seg = train_segmenter(train["images"], train["masks"], 3, cfg, 0, torch.device("cpu"))
    whole = segmentation_scores(predict_masks(seg, test["images"], torch.device("cpu")), test["masks"], 3)
    batched = score_segmenter(seg, open_split(phantom_store, "test")["images"], test["masks"], 3,
                              torch.device("cpu"), batch=3)
    for m in ("dice", "hd95"):
        np.testing.assert_array_equal(batched[m], whole[m])


def test_evaluation_streams_the_real_splits_and_scores_them_as_if_held(phantom_store, tmp_path, monkeypatch):
    from motfm_core.evaluation.downstream import evaluate_augmentation
    from motfm_core.evaluation.evaluate import evaluate_run, read_evaluation
    from motfm_core.evaluation.privacy import audit_stores
    from motfm_core.evaluation.quality import synthetic_quality

    train = load_split(phantom_store, "train")
    n = len(train["labels"])
    store = create_synthetic_store(tmp_path / "synthetic" / "v0001.zarr", n, train["images"].shape[1:], n,
                                   {"run_key": "x"}, with_masks=True)
    noisy = np.clip(train["images"] + np.random.default_rng(0).normal(0, 0.05, train["images"].shape), 0, 1)
    write_shard(store, 0, noisy, train["labels"], np.arange(n), masks=train["masks"], mask_source=np.arange(n))
    cfg = EvalConfig(seeds=(0,), steps=6, batch_size=8, channels=(8, 16), ratios=(1.0,), real_fractions=(),
                     seg_steps=3, seg_channels=(8, 16))
    held = {"train": train, "test": load_split(phantom_store, "test")}
    streamed = {"train": open_split(phantom_store, "train"), "test": open_split(phantom_store, "test")}
    a, b = (evaluate_augmentation(phantom_store, store, cfg, device="cpu", real=r) for r in (held, streamed))
    assert a.per_seed == b.per_seed and a.segmentation == b.segmentation
    qa, qb = (synthetic_quality(phantom_store, store, cfg, device="cpu", real=r) for r in (held, streamed))
    assert dataclasses.asdict(qa) == dataclasses.asdict(qb)
    ma, mb = (audit_stores(phantom_store, store, real=r) for r in (held, streamed))
    assert ma == mb

    from motfm_core.data import store as store_module

    def whole_split(root, rows):
        pytest.fail("the evaluation loaded a real split whole")

    for name in ("held", "streamed"):
        (tmp_path / name).mkdir()
    held_run = read_evaluation(evaluate_run(phantom_store, store, cfg, tmp_path / "held"))  # splits under 512 MB
    monkeypatch.setattr(store_module, "read_rows", whole_split)
    lines = []
    streamed_cfg = dataclasses.replace(cfg, memory_mb=0)  # every split over it: read from the store
    result = read_evaluation(evaluate_run(phantom_store, store, streamed_cfg, tmp_path / "streamed",
                                          progress=lines.append))
    assert result.augmentation.per_seed == held_run.augmentation.per_seed == a.per_seed
    assert result.quality.synthetic_vs_test.fid == held_run.quality.synthetic_vs_test.fid == qa.synthetic_vs_test.fid
    assert any("real test split" in line and "over eval.memory_mb (0)" in line for line in lines)


def test_nearest_reads_references_from_a_store_in_blocks_and_finds_the_same(phantom_store, monkeypatch):
    """References left in the store are searched a block at a time; every query gets the distance and the index one
    pass over them in memory gives, ties included (the first of equal distances)."""
    from motfm_core.model import guard

    train = load_split(phantom_store, "train")["images"]
    lazy = open_split(phantom_store, "train")["images"]
    queries = np.concatenate([train[:5], open_split(phantom_store, "test")["images"][:7]])  # exact copies: ties
    whole = guard.nearest(queries, train)
    monkeypatch.setattr(guard, "REF_BLOCK_BYTES", 3 * train[0].nbytes)  # blocks of 3 references
    blocked = guard.nearest(queries, lazy, batch=4)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_array_equal(blocked[1], whole[1])
    assert (blocked[0][:5] == 0).all() and (blocked[1][:5] == np.arange(5)).all()

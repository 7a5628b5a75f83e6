"""The latent path: the autoencoder stage's key and resume, latent scaling, windowed vs whole decoding, masks on the
latent grid, a latent model trained and sampled into image-space shards, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from motfm_core.config import AutoencoderConfig, PipelineConfig, SampleConfig
from motfm_core.model import autoencoder as ae_module
from motfm_core.model.autoencoder import load_autoencoder, train_autoencoder
from motfm_core.model.latents import LatentCodec, encode_train_split, latent_masks
from tests.conftest import TINY_MODEL

TINY_AE = {"channels": (8, 8, 16), "latent_channels": 2, "patch_size": 8, "batch_size": 4, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def tiny_autoencoder(phantom_store, tmp_path_factory):
    """A 4x autoencoder trained briefly on the 16 px phantoms."""
    return train_autoencoder(phantom_store, AutoencoderConfig(steps=60, **TINY_AE), tmp_path_factory.mktemp("ae"))


def test_stage_reuses_and_resumes_to_the_same_weights(phantom_store, tmp_path, monkeypatch):
    cfg = AutoencoderConfig(steps=4, **TINY_AE)
    whole = train_autoencoder(phantom_store, cfg, tmp_path / "whole")
    said = []
    assert train_autoencoder(phantom_store, cfg, tmp_path / "whole", progress=said.append) == whole
    assert any("reusing" in s for s in said)
    # interrupted after its first checkpoint (step 2): the re-run resumes there and ends with the same weights
    real_save, calls = ae_module.save_atomic, []

    def crash_after_first(obj, path):
        real_save(obj, path)
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(ae_module, "save_atomic", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(phantom_store, cfg, tmp_path / "cut")
    monkeypatch.setattr(ae_module, "save_atomic", real_save)
    assert torch.load(calls[0], weights_only=True)["step"] == 2
    said = []
    resumed = train_autoencoder(phantom_store, cfg, tmp_path / "cut", progress=said.append)
    assert any("resuming" in s and "step 2/4" in s for s in said)
    a, b = (torch.load(p, weights_only=True)["state"] for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another recipe is another key: trained afresh, not reused
    said = []
    train_autoencoder(phantom_store, AutoencoderConfig(steps=5, **TINY_AE), tmp_path / "whole", progress=said.append)
    assert not any("reusing" in s for s in said)


def test_latents_have_unit_variance_and_are_encoded_once(phantom_store, tiny_autoencoder):
    cfg = AutoencoderConfig(**TINY_AE)
    store = encode_train_split(phantom_store, tiny_autoencoder, cfg)
    z = zarr.open_group(str(store), mode="r")
    latents, record = np.asarray(z["images"][:]), dict(z.attrs["record"])
    assert latents.shape[1:] == (2, 4, 4)
    assert abs(latents.mean()) < 1e-4 and abs(latents.std() - 1) < 1e-4
    # the record decodes them: unscaled latents through the decoder give the autoencoder's own reconstructions
    codec = LatentCodec.load(record)
    train = zarr.open_group(str(phantom_store), mode="r")
    first = torch.from_numpy(np.asarray(train["images"][np.nonzero(train["split"][:] == 0)[0][:3]]))
    assert torch.allclose(codec.encode(first), torch.from_numpy(latents[:3]), atol=1e-5)
    model, _ = load_autoencoder(tiny_autoencoder)
    with torch.inference_mode():
        direct = ((model.decode(model.encode(first * 2 - 1)[0]) + 1) / 2).clamp(0, 1)
    assert torch.allclose(codec.decode(torch.from_numpy(latents[:3])), direct, atol=1e-5)
    stamp = (store / "zarr.json").stat().st_mtime_ns
    assert encode_train_split(phantom_store, tiny_autoencoder, cfg) == store
    assert (store / "zarr.json").stat().st_mtime_ns == stamp  # cached: not encoded again


def test_windowed_decoding_agrees_with_whole(phantom_store, tiny_autoencoder):
    model, _ = load_autoencoder(tiny_autoencoder)
    train = zarr.open_group(str(phantom_store), mode="r")["images"][:16]
    mosaic = torch.from_numpy(np.asarray(train)).reshape(4, 4, 16, 16).permute(0, 2, 1, 3).reshape(1, 1, 64, 64)
    whole_codec = LatentCodec(model, AutoencoderConfig(**TINY_AE), 0.0, 1.0)
    z = whole_codec.encode(mosaic)  # 16 x 16 latents of real (phantom) content
    whole = whole_codec.decode(z)
    tiled = LatentCodec(model, AutoencoderConfig(**{**TINY_AE, "tile": 8, "tile_overlap": 0.5}), 0.0, 1.0)
    assert tiled.window((16, 16)) == (8, 8)
    windows = tiled.decode(z)
    assert windows.shape == whole.shape == (1, 1, 64, 64)
    err = (windows - whole).abs()
    recon = (whole - mosaic).abs().mean()
    # the windows' seams cost a small share of what the autoencoder itself gets wrong
    assert float(err.mean()) < 0.25 * float(recon), (float(err.mean()), float(recon))
    assert not torch.equal(windows, whole)  # the windows really ran
    # windowed encoding: its latents reconstruct the images as well as the whole image's do (within 10%)
    assert float((whole_codec.decode(tiled.encode(mosaic)) - mosaic).abs().mean()) < 1.1 * float(recon)


def test_masks_on_the_latent_grid_keep_the_majority_class():
    masks = np.zeros((1, 1, 8, 8), np.uint8)
    masks[0, 0, :4, :4] = 2  # a whole latent voxel of class 2
    masks[0, 0, 4:7, 4:7] = 1  # 9 of 16 pixels: class 1 wins there
    masks[0, 0, 0, 7] = 3  # one pixel of class 3: background keeps its voxel
    out = latent_masks(masks, 4, 4)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[2, 0], [0, 1]]
    volume = np.ones((2, 1, 8, 8, 4), np.uint8)
    assert latent_masks(volume, 2, 2).shape == (2, 1, 4, 4, 2) and latent_masks(volume, 2, 2).min() == 1


def test_latent_model_trains_and_samples_image_space_shards(phantom_store, tiny_autoencoder, tmp_path):
    from motfm_core.data.synthetic import load_synthetic
    from motfm_core.model.sampling import Sampler, prepare_version, sample_shard
    from motfm_core.model.training import load_checkpoint, train_flow_matching

    cfg = PipelineConfig.from_overrides({
        "data": {"image_size": 16}, "autoencoder": dict(TINY_AE),
        "model": {"space": "latent", "mask_conditioning": "concat", "channels": [16, 16],
                  "attention_levels": [False, False], "norm_num_groups": 8, "num_head_channels": 8},
        "train": {"steps": 6, "batch_size": 8, "warmup_steps": 1}})
    assert cfg.model.spatial_shape == (4, 4) and cfg.model.in_channels == 2
    ckpt = train_flow_matching(phantom_store, cfg.model, cfg.train, tmp_path / "ckpt",
                               autoencoder=tiny_autoencoder, autoencoder_cfg=cfg.autoencoder)
    model, meta = load_checkpoint(ckpt)
    assert model.cfg.mask_classes == 2 and meta["autoencoder"]["sha256"]
    sample = SampleConfig(samples_per_class=2, nfe=2, shard_size=3, batch_size=2, mask_source="deformed")
    store, todo = prepare_version(ckpt, sample, tmp_path / "syn")
    for i in todo:
        sample_shard(ckpt, store, i, sample)
    out = load_synthetic(store)
    assert out["images"].shape == (6, 1, 16, 16) and out["masks"].shape == (6, 1, 16, 16)
    assert 0 <= out["images"].min() and out["images"].max() <= 1 and np.isfinite(out["images"]).all()
    assert zarr.open_group(str(store), mode="r").attrs["autoencoder"]["sha256"] == meta["autoencoder"]["sha256"]
    # batch-invariant as in pixel space: one sample at a time gives the same bytes
    one = Sampler(ckpt, SampleConfig(**{**sample.__dict__, "batch_size": 1}))
    images, _, _ = one.draw(np.arange(6), one.seeds)
    np.testing.assert_allclose(images, out["images"], atol=1e-5)
    # without its autoencoder the model cannot decode: a clear error, not images of noise
    tiny_autoencoder.rename(tiny_autoencoder.with_suffix(".moved"))
    try:
        with pytest.raises(FileNotFoundError, match="train-autoencoder"):
            Sampler(ckpt, sample)
    finally:
        tiny_autoencoder.with_suffix(".moved").rename(tiny_autoencoder)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data": {"image_size": 40}, "autoencoder": {"channels": [8, 8, 8, 8, 16]}},
     "data.image_size=40 is not divisible by the autoencoder's downsampling 16"),
    ({"model": {"space": "latent", "mask_conditioning": "controlnet"}}, "controlnet"),
    ({"sample": {"mask_source": "generated"}}, "sample.mask_source='generated' is not supported"),
    ({"train": {"reflow_from": "x.pt"}}, "train.reflow_from"),
    ({"data": {"voxel_mm": 1}}, "data.voxel_mm=1 applies to brain-mri 3D blocks only"),
    # a given autoencoder serves every generator: the low-data ones would not be leak-free
    ({"autoencoder": {"checkpoint": "ae.pt"}, "eval": {"real_fractions": [0.25]}},
     "autoencoder.checkpoint serves every generator, so the low-data generators (eval.real_fractions="),
])
def test_latent_settings_that_cannot_apply_are_refused(overrides, message):
    merged = {"model": {"space": "latent"}, **{k: v for k, v in overrides.items() if k != "model"}}
    merged["model"] = {**merged["model"], **overrides.get("model", {})}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PipelineConfig.from_overrides(merged)


def test_a_given_autoencoder_of_other_data_or_size_is_refused(phantom_store, tiny_autoencoder, tmp_path):
    from motfm_core.config import DataConfig
    from motfm_core.data import ingest

    other = ingest(DataConfig(source="phantom:5", image_size=16), tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="trained on other data"):
        train_autoencoder(other, AutoencoderConfig(checkpoint=str(tiny_autoencoder), **TINY_AE), tmp_path / "x")
    bigger = ingest(DataConfig(source="phantom:12", image_size=24), tmp_path / "bigger.zarr")
    meta = torch.load(tiny_autoencoder, weights_only=True)
    meta["data_fingerprint"] = zarr.open_group(str(bigger), mode="r").attrs["fingerprint"]
    forged = tmp_path / "forged.pt"
    torch.save(meta, forged)
    with pytest.raises(ValueError, match="trained on 1 x 16x16 images, this data is 1 x 24x24"):
        train_autoencoder(bigger, AutoencoderConfig(checkpoint=str(forged), **TINY_AE), tmp_path / "y")
    assert train_autoencoder(phantom_store, AutoencoderConfig(checkpoint=str(tiny_autoencoder), **TINY_AE),
                             tmp_path / "z") == tiny_autoencoder


def test_adversarial_loss_trains_a_discriminator(phantom_store, tmp_path):
    cfg = AutoencoderConfig(steps=2, adversarial_weight=0.1, adversarial_start=1, **TINY_AE)
    train_autoencoder(phantom_store, cfg, tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "discriminator" in last and last["step"] == 2


def test_the_run_plan_includes_the_autoencoder():
    from motfm_core.model.memory import plan_run

    cfg = PipelineConfig.from_overrides({"data": {"spatial_dims": 3, "image_size": 32, "depth": 32},
                                         "model": {"space": "latent", **TINY_MODEL}})
    line = plan_run(cfg)
    assert "autoencoder: 4x per axis to 4 x 8x8x8 latents" in line and "decoding an image whole" in line


def test_reconstruction_scores_are_the_autoencoders_own(phantom_store, tiny_autoencoder):
    from motfm_core.data.store import load_split
    from motfm_core.evaluation.quality import reconstruction

    store = encode_train_split(phantom_store, tiny_autoencoder, AutoencoderConfig(**TINY_AE))
    record = dict(zarr.open_group(str(store), mode="r").attrs["record"])
    test = load_split(phantom_store, "test")["images"]
    r = reconstruction(test, record, most=5)
    pick = np.unique(np.linspace(0, len(test) - 1, 5).round().astype(int))
    codec = LatentCodec.load(record)
    x = torch.from_numpy(test[pick])
    mse = (codec.decode(codec.encode(x)) - x).pow(2).flatten(1).mean(1)
    assert r.images == 5 and abs(r.psnr - float((10 * torch.log10(1 / mse)).mean())) < 1e-3
    assert -1 <= r.ssim <= 1 and r.swd_fine > 0  # (a 60-step autoencoder on 16 px phantoms: SSIM near 0)


def test_a_low_data_generator_encodes_and_scales_its_own_share_only(phantom_store, tiny_autoencoder, tmp_path):
    """The latent mean and scale came from the whole train split, and latents.zarr was shared beside the
    autoencoder: a low-data generator's latents held what it must not see."""
    from motfm_core.data.store import SPLITS, open_store, stratified_subset

    cfg = AutoencoderConfig(**TINY_AE)
    whole = encode_train_split(phantom_store, tiny_autoencoder, cfg, out_dir=tmp_path / "all")
    share = encode_train_split(phantom_store, tiny_autoencoder, cfg, real_fraction=0.5, subset_seed=3,
                               out_dir=tmp_path / "half")
    assert share == tmp_path / "half" / "latents.zarr" and whole != share
    root = open_store(phantom_store)
    labels = np.asarray(root["labels"][:])[np.asarray(root["split"][:]) == SPLITS["train"]]
    z = zarr.open_group(str(share), mode="r")
    np.testing.assert_array_equal(z["indices"][:], stratified_subset(labels, 0.5, 3))
    assert z["images"].shape[0] == z["indices"].shape[0] < zarr.open_group(str(whole), mode="r")["images"].shape[0]
    record, whole_record = z.attrs["record"], zarr.open_group(str(whole), mode="r").attrs["record"]
    assert record["mean"] != whole_record["mean"]  # statistics of the share alone


def test_a_shared_autoencoder_is_accepted_only_when_asked_and_the_report_says_so():
    from motfm_core.evaluation.sections import shared_autoencoder_line

    cfg = PipelineConfig.from_overrides({"model": {"space": "latent"}, "eval": {"real_fractions": [0.25]},
                                         "autoencoder": {"checkpoint": "ae.pt", "share_checkpoint": True}})
    line = shared_autoencoder_line(cfg.to_dict())
    assert len(line) == 1 and "not leak-free" in line[0] and "ae.pt" in line[0]


def test_the_latent_path_takes_several_channels(phantom_store, tmp_path):
    """Multi-sequence images through the autoencoder: C channels in, latents, C channels decoded back."""
    from motfm_core.data.store import open_store, write_dataset

    root = open_store(phantom_store)
    images = np.asarray(root["images"][:])
    two = write_dataset(tmp_path / "two.zarr", np.concatenate([images, 1.0 - images], axis=1),
                        np.asarray(root["labels"][:]), np.asarray(root["split"][:]), np.asarray(root["group"][:]),
                        {"class_names": list(root.attrs["class_names"]), "channel_names": ["a", "b"]})
    cfg = AutoencoderConfig(steps=4, **TINY_AE)
    ae = train_autoencoder(two, cfg, tmp_path / "ae")
    assert load_autoencoder(ae)[1]["in_channels"] == 2
    z = zarr.open_group(str(encode_train_split(two, ae, cfg, out_dir=tmp_path / "gen")), mode="r")
    assert z["images"].shape[1] == cfg.latent_channels
    codec = LatentCodec.load(dict(z.attrs["record"]))
    decoded = codec.decode(torch.from_numpy(np.asarray(z["images"][:2])))
    assert decoded.shape == (2, 2, 16, 16)


def test_latents_larger_than_the_memory_given_are_read_from_their_store(tiny_autoencoder, tmp_path, monkeypatch):
    """A latent model whose encoded share does not fit beside a step (train.memory_gb) trains on batches read from
    latents.zarr (never the set held, never the images again), and the latents were written there a batch at a
    time, at unit variance."""
    from dataclasses import replace

    from motfm_core.data.loader import RandomBatches
    from motfm_core.data.store import write_dataset
    from motfm_core.model import trainset
    from motfm_core.model.memory import plan_training
    from motfm_core.model.training import load_checkpoint, model_for_data, train_flow_matching

    rng = np.random.default_rng(0)
    n = 3000
    masks = (rng.random((n, 1, 16, 16)) < 0.3).astype(np.uint8)
    store = write_dataset(tmp_path / "big.zarr", rng.random((n, 1, 16, 16), dtype=np.float32), np.arange(n) % 3,
                          np.zeros(n, np.uint8), np.arange(n, dtype=np.int32),
                          {"source": "test", "class_names": ["a", "b", "c"]}, masks=masks)
    cfg = PipelineConfig.from_overrides({
        "data": {"image_size": 16}, "autoencoder": dict(TINY_AE),
        "model": {"space": "latent", "mask_conditioning": "concat", "channels": [16, 16],
                  "attention_levels": [False, False], "norm_num_groups": 8, "num_head_channels": 8},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2}})
    model_cfg = model_for_data(cfg.model, store)
    step_gb = plan_training(model_cfg, cfg.train, "cpu").step_gb
    held = trainset.training_bytes(store, cfg.train, model_cfg)
    assert held == n * (2 * 4 * 4 * 4 + 4 * 4)  # float32 latents and uint8 masks on the latent grid
    train = replace(cfg.train, memory_gb=step_gb + 1e-4)  # 100 kB beside a step: less than the 432 kB set

    paths: list[str] = []
    original = RandomBatches.__iter__

    def spy(self):
        paths.append(self.path)
        yield from original(self)

    def whole_set(*a, **k):
        raise AssertionError("the whole training set was read")

    monkeypatch.setattr(RandomBatches, "__iter__", spy)
    monkeypatch.setattr("motfm_core.model.training.training_set", whole_set)
    said: list[str] = []
    ckpt = train_flow_matching(store, cfg.model, train, tmp_path / "gen", progress=said.append,
                               autoencoder=tiny_autoencoder, autoencoder_cfg=cfg.autoencoder)
    assert any("reading it from the store a batch at a time" in s for s in said)
    assert paths and all(p.endswith("latents.zarr") for p in paths)
    _, meta = load_checkpoint(ckpt)
    assert meta["num_train"] == n and meta["autoencoder"]["sha256"]  # every row is in the train split
    z = zarr.open_group(str(tmp_path / "gen" / "latents.zarr"), mode="r")
    latents = np.asarray(z["images"][:])
    assert abs(latents.mean()) < 1e-4 and abs(latents.std() - 1) < 1e-4 and z["masks"].shape == (n, 1, 4, 4)

import numpy as np
import pytest
import zarr

from motfm_core.evaluation.quality import FeatureExtractor, fid, kid, precision_recall, quality


def gauss(n, d=8, shift=0.0, seed=0):
    return np.random.RandomState(seed).randn(n, d) + shift


def test_fid_known_cases():
    a = gauss(500)
    assert abs(fid(a, a)) < 1e-6
    # same covariance, mean shifted by 1 in each of 8 dims: FID ~ ||mu_a - mu_b||^2 = 8
    assert fid(a, a + 1.0) == pytest.approx(8.0, rel=1e-3)
    assert fid(gauss(500, seed=1), gauss(500, seed=2)) < 0.5


def test_kid_is_unbiased_near_zero_for_identical_distributions():
    same = [kid(gauss(200, seed=s), gauss(200, seed=s + 100), seed=s) for s in range(5)]
    assert abs(np.mean(same)) < 0.02
    assert kid(gauss(200), gauss(200, shift=1.0, seed=7)) > 10 * abs(np.mean(same)) + 0.1


def test_precision_recall_on_separated_and_identical_gaussians():
    pr = precision_recall(gauss(300), gauss(300, shift=10.0, seed=1))
    assert pr == {"precision": 0.0, "recall": 0.0}
    pr = precision_recall(gauss(300), gauss(300, seed=1))
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    # a generator that covers only part of the data: high precision, low recall
    real = gauss(300, d=2)
    fake = real[real[:, 0] > 0.5][:, :] + 0.01
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.6


def test_features_and_baseline_on_phantoms(phantom_store):
    from motfm_core.config import EvalConfig
    from motfm_core.data import load_split

    ext = FeatureExtractor.train(phantom_store, EvalConfig(steps=20, channels=(8, 16)))
    train, test = load_split(phantom_store, "train"), load_split(phantom_store, "test")
    f_train, f_test = ext(train["images"]), ext(test["images"])
    assert f_train.shape == (len(train["labels"]), 16) and np.isfinite(f_train).all()
    q = quality(f_train, f_test, f_train)
    assert set(q.to_json()) == {"synthetic_vs_test", "train_vs_test"}  # no images: no SWD, diversity or curve
    assert q.synthetic_vs_test.fid == pytest.approx(q.train_vs_test.fid) and q.synthetic_vs_test.swd is None


def test_swd_ranks_blur_and_noise_worse_than_fresh_real_images():
    from scipy.ndimage import gaussian_filter

    from motfm_core.data.phantom import phantom_image
    from motfm_core.evaluation.quality import swd

    rng = np.random.RandomState(0)
    def make(n):
        return np.stack([phantom_image(i % 3, (32, 32), rng)[0] for i in range(n)])
    real, other = make(60), make(60)
    blurred = gaussian_filter(other, (0, 0, 1.0, 1.0))
    noisy = np.clip(other + rng.randn(*other.shape) * 0.1, 0, 1)
    base = swd(real, other)
    assert set(base) == {"level0", "level1", "level2", "mean"}
    assert swd(real, blurred)["level0"] > 2 * base["level0"]
    assert swd(real, noisy)["level0"] > 2 * base["level0"]
    assert swd(real, other, seed=1)["mean"] == pytest.approx(swd(real, other, seed=1)["mean"])  # seeded


def test_diversity_of_identical_images_is_one_and_real_sets_are_lower():
    from motfm_core.data.phantom import phantom_image
    from motfm_core.evaluation.quality import diversity

    rng = np.random.RandomState(0)
    imgs = np.stack([phantom_image(i % 3, (32, 32), rng)[0] for i in range(30)])
    labels = np.arange(30) % 3
    copies = np.repeat(imgs[:1], 30, 0)
    assert diversity(copies, labels).ms_ssim == pytest.approx(1.0, abs=1e-4)
    assert diversity(imgs, labels).ms_ssim < 0.95
    assert diversity(imgs[:, :, :16, :16], labels).pairs > 0  # small images use a smaller window


def test_quality_on_3d_volumes(tmp_path):
    """3D stores: the extractor is a 3D classifier, SWD uses the middle slice, MS-SSIM fits 8-slice volumes."""
    from motfm_core.config import DataConfig, EvalConfig
    from motfm_core.data import create_synthetic_store, ingest, load_split, write_shard
    from motfm_core.evaluation.quality import synthetic_quality

    real = ingest(DataConfig(source="phantom:12", image_size=16, spatial_dims=3, depth=8), tmp_path / "r.zarr")
    train = load_split(real, "train")
    n = len(train["labels"])
    syn = create_synthetic_store(tmp_path / "s.zarr", n, train["images"].shape[1:], n, {"run_key": "x"})
    write_shard(syn, 0, train["images"], train["labels"], np.arange(n))  # synthetic = the training volumes
    q = synthetic_quality(real, syn, EvalConfig(steps=10, channels=(8, 16)))
    assert q.synthetic_vs_test.fid == pytest.approx(q.train_vs_test.fid)
    assert q.diversity is not None and q.synthetic_vs_test.swd is not None
    assert q.diversity["synthetic"].ms_ssim == pytest.approx(q.diversity["real_train"].ms_ssim)
    assert q.synthetic_vs_test.swd["mean"] > 0


def test_blockwise_precision_recall_equals_the_all_pairs_definition():
    """Blocks of 7 rows (not a divisor of either set) give exactly the all-pairs result of the definition."""
    rng = np.random.RandomState(0)
    real, fake = rng.randn(50, 8), rng.randn(37, 8) * 1.3 + 0.4

    def radius(x, k):
        return np.sort(np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)), axis=1)[:, k]

    d = np.sqrt(((fake[:, None] - real[None]) ** 2).sum(-1))
    want = {"precision": float((d <= radius(real, 3)[None]).any(1).mean()),
            "recall": float((d.T <= radius(fake, 3)[None]).any(1).mean())}
    got = precision_recall(real, fake, k=3, block=7)
    assert got == pytest.approx(want, abs=0) and 0 < got["precision"] < 1 and 0 < got["recall"] < 1


def test_metrics_read_a_store_in_batches_as_they_read_memory(tmp_path):
    """Features, SWD, diversity and the nearest-neighbour search give the same numbers on a Zarr array (read a
    batch at a time) as on the same images in memory; SWD of a set over its cap scores a random subset."""
    from motfm_core.data import create_synthetic_store, write_shard
    from motfm_core.data.phantom import phantom_image
    from motfm_core.evaluation.quality import diversity, swd
    from motfm_core.model.guard import nearest

    rng = np.random.RandomState(0)
    imgs = np.stack([phantom_image(i % 3, (16, 16), rng)[0] for i in range(24)])
    labels = np.arange(24) % 3
    path = create_synthetic_store(tmp_path / "s.zarr", 24, (1, 16, 16), 8, {"run_key": "k"})
    for s in range(3):
        write_shard(path, s, imgs[8 * s:8 * s + 8], labels[8 * s:8 * s + 8], np.arange(8 * s, 8 * s + 8))
    lazy = zarr.open_group(str(path), mode="r")["images"]
    assert swd(imgs[:12], lazy) == swd(imgs[:12], imgs)
    assert diversity(lazy, labels) == diversity(imgs, labels)
    for a, b in zip(nearest(lazy, imgs[:5], batch=5), nearest(imgs, imgs[:5])):
        np.testing.assert_array_equal(a, b)
    assert swd(imgs, lazy, most=10) == swd(imgs, lazy, most=10) != swd(imgs, lazy)  # seeded subset of 10


def test_diversity_of_large_volumes_is_pooled_and_on_fewer_pairs():
    from motfm_core.evaluation.quality import diversity

    rng = np.random.default_rng(0)
    volumes = rng.random((6, 1, 16, 16, 16), dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    full = diversity(volumes, labels, pairs=40)
    capped = diversity(volumes, labels, pairs=40, voxels=16 ** 3 * 25)  # room for 25 pairs: at least 20 kept
    assert full.pairs > capped.pairs > 0 and capped.pairs <= 25
    # pooled by 2: the score of the pooled volumes themselves
    pooled = volumes.reshape(6, 1, 8, 2, 8, 2, 8, 2).mean((3, 5, 7))
    at_two = diversity(volumes, labels, pairs=40, downsample=2)
    assert abs(at_two.ms_ssim - diversity(pooled, labels, pairs=40).ms_ssim) < 1e-5


def test_density_and_coverage_follow_the_published_formulas():
    """Naeem et al. 2020, on cases with known answers: a copy of the real set (coverage 1, density exactly
    (k + 1) / k: each fake lies in its own ball and its k neighbours'), a set far away (both 0), the all-pairs
    definition on random sets (blocks of 7 rows), and a real outlier whose large ball makes precision vouch for
    fakes that no dense real region holds (precision 1, density only 1 / k)."""
    from motfm_core.evaluation.quality import density_coverage

    real = gauss(200, d=4)
    assert density_coverage(real, real.copy(), k=5) == pytest.approx({"density": 6 / 5, "coverage": 1.0})
    assert density_coverage(real, gauss(200, d=4, shift=20.0, seed=1), k=5) == {"density": 0.0, "coverage": 0.0}

    rng = np.random.RandomState(0)
    a, b = rng.randn(50, 8), rng.randn(37, 8) * 1.3 + 0.4
    r = np.sort(np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1)), axis=1)[:, 3]
    inside = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1)) <= r[None]
    want = {"density": inside.sum() / (3 * len(b)), "coverage": inside.any(0).mean()}
    assert density_coverage(a, b, k=3, block=7) == pytest.approx(want, abs=1e-12)

    cluster = rng.randn(100, 2) * 0.1
    real = np.vstack([cluster, [[100.0, 0.0]]])  # one real outlier: its 3-NN ball reaches back to the cluster
    fake = np.array([[50.0, y] for y in np.linspace(-1, 1, 20)])  # nowhere near the real data
    assert precision_recall(real, fake, k=3)["precision"] == 1.0  # fooled: all inside the outlier's ball
    dc = density_coverage(real, fake, k=3)
    assert dc["density"] == pytest.approx(1 / 3) and dc["coverage"] == pytest.approx(1 / 101)


def test_diversity_with_one_image_per_class_says_there_is_nothing_to_compare():
    """A run with one sample per class ended in 'need at least one array to concatenate' after its training."""
    from motfm_core.evaluation.quality import diversity

    images = np.random.RandomState(0).rand(3, 1, 16, 16).astype(np.float32)
    assert diversity(images, np.array([0, 1, 2])) is None
    assert diversity(images, np.array([0, 0, 1])) is not None


def _swd_in_one_pass(real, fake, levels=3, n=64, size=7, projections=256, seed=0, most=2000):
    """SWD as it was computed before it read its images a batch at a time: whole sets, whole pyramids."""
    import torch

    from motfm_core.evaluation.swd import _laplacian_pyramid

    def pick(x):
        rows = np.arange(len(x)) if len(x) <= most else np.sort(np.random.RandomState(seed).choice(len(x), most,
                                                                                                   replace=False))
        x = np.asarray(x)[rows]
        return torch.from_numpy(np.asarray(x[..., x.shape[-1] // 2] if x.ndim == 5 else x, dtype=np.float64))

    def pyramid(x):  # the whole set's pyramid at once (the per-image filter itself is the module's)
        return _laplacian_pyramid(x, levels)

    def patches(x, g):
        b, _, h, w = x.shape
        i = torch.randint(0, h - size + 1, (b, n), generator=g)
        j = torch.randint(0, w - size + 1, (b, n), generator=g)
        return x.unfold(2, size, 1).unfold(3, size, 1)[torch.arange(b)[:, None].expand(b, n), :, i, j].reshape(
            b * n, -1)

    g = torch.Generator().manual_seed(seed)
    out = {}
    for lvl, (la, lb) in enumerate(zip(pyramid(pick(real)), pyramid(pick(fake)))):
        pa, pb = patches(la, g), patches(lb, g)
        m = min(len(pa), len(pb))
        pa, pb = pa[torch.randperm(len(pa), generator=g)[:m]], pb[torch.randperm(len(pb), generator=g)[:m]]
        both = torch.cat([pa, pb])
        mu, sd = both.mean(0), both.std(0) + 1e-8
        d = torch.randn(pa.shape[1], projections, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=0, keepdim=True)
        a, b = ((pa - mu) / sd) @ d, ((pb - mu) / sd) @ d
        out[f"level{lvl}"] = float((a.sort(0).values - b.sort(0).values).abs().mean() * 1e3)
    return out


@pytest.mark.parametrize("shape,most", [((40, 1, 48, 48), 2000), ((30, 2, 32, 32, 9), 2000), ((50, 1, 48, 48), 20)])
def test_swd_read_a_batch_at_a_time_equals_the_one_pass_over_whole_sets(shape, most, monkeypatch):
    """SWD keeps patches, not images or pyramids, reading a batch of images at a time (the real test split stays
    in the store): every draw is made in the order of one pass over the whole sets, so the scores are the same,
    for 2D, for 3D volumes of two channels, and with the `most` subsample."""
    from motfm_core.data.rows import Rows
    from motfm_core.evaluation import swd as swd_module
    from motfm_core.evaluation.swd import swd

    rng = np.random.default_rng(0)
    real, fake = rng.random(shape).astype(np.float32), rng.random((shape[0] - 7, *shape[1:])).astype(np.float32)
    monkeypatch.setattr(swd_module, "rows_per_batch", lambda array, most=256, budget=0: 8)  # batches of 8
    got = swd(Rows((real, None)), fake, most=most)
    want = _swd_in_one_pass(real, fake, most=most)
    assert {k: got[k] for k in want} == want

import dataclasses
import json
import math

import numpy as np

from motfm_core.config import EvalConfig
from motfm_core.data import create_synthetic_store, load_split, write_shard
from motfm_core.evaluation.downstream import evaluate_augmentation
from motfm_core.evaluation.metrics import classification_metrics, summarise


def test_metrics_on_known_cases():
    y = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[y]
    m = classification_metrics(y, perfect)
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "auroc": 1.0}
    wrong = np.eye(3)[(y + 1) % 3]
    m = classification_metrics(y, wrong)
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["auroc"] < 0.5
    assert math.isnan(classification_metrics(np.array([0, 0, 1]), np.eye(3)[[0, 0, 1]])["auroc"])
    s = summarise([0.5, 0.7, 0.9])
    assert abs(s.mean - 0.7) < 1e-12 and abs(s.std - 0.2) < 1e-12 and s.n == 3 and (s.min, s.max) == (0.5, 0.9)


def test_evaluate_augmentation_on_phantoms(phantom_store, tmp_path):
    """Synthetic set = the real training images (and masks) in the same order: the 'synthetic' arm then sees
    exactly the real arm's data with the same seed, so their metrics must be identical (a check of the wiring)."""
    train = load_split(phantom_store, "train")
    n = len(train["labels"])
    store = create_synthetic_store(tmp_path / "s.zarr", n, train["images"].shape[1:], n, {"run_key": "x"},
                                   with_masks=True)
    write_shard(store, 0, train["images"], train["labels"], np.arange(n), masks=train["masks"],
                mask_source=np.arange(n))
    cfg = EvalConfig(seeds=(0, 1), steps=40, batch_size=16, channels=(8, 16), ratios=(0.5,), real_fractions=(0.5,),
                     seg_steps=20, seg_channels=(8, 16))
    # the low-data generator's store: trained on the 50% subset only (recorded), here holding that subset itself
    from motfm_core.data import stratified_subset

    sub = stratified_subset(train["labels"], 0.5, cfg.subset_seed)
    low = create_synthetic_store(tmp_path / "low.zarr", len(sub), train["images"].shape[1:], len(sub),
                                 {"run_key": "y", "train_indices": sub.tolist()}, with_masks=True)
    write_shard(low, 0, train["images"][sub], train["labels"][sub], np.arange(len(sub)), masks=train["masks"][sub],
                mask_source=sub)
    out = evaluate_augmentation(phantom_store, store, cfg, device="cpu", low_data={0.5: low})
    names = ["real", "real+synthetic x0.5", "real+synthetic", "synthetic", "real 50%", "real 50%+synthetic"]
    assert [a.name for a in out.arms] == names and set(out.per_seed) == set(names)
    sizes = out.sizes.arms
    assert sizes["real+synthetic x0.5"] == {"real": n, "synthetic": round(0.5 * n)}
    assert sizes["synthetic"] == {"real": 0, "synthetic": n}
    # leak-free: the low-data arm sees its subset and only its own generator's images, never the other real images
    assert sizes["real 50%"]["real"] == len(sub) < n and sizes["real 50%+synthetic"] == {"real": len(sub),
                                                                                        "synthetic": len(sub)}
    assert out.sizes.synthetic_added == n
    for arm in out.summary.values():
        assert arm["accuracy"].n == 2 and 0 <= arm["accuracy"].mean <= 1
    assert out.per_seed["synthetic"] == out.per_seed["real"]
    gains = [out.per_seed["real+synthetic"][s]["accuracy"] - out.per_seed["real"][s]["accuracy"] for s in ("0", "1")]
    assert abs(out.gain["accuracy"].mean - np.mean(gains)) < 1e-12
    assert set(out.gains) == set(names) - {"real", "real 50%"}
    seg = out.segmentation
    assert seg is not None and seg.per_seed["synthetic"] == seg.per_seed["real"]
    assert 0 <= seg.summary["real"]["dice"].mean <= 1 and seg.summary["real"]["hd95"].mean >= 0
    g = seg.gains["synthetic"]["dice"]
    assert g.mean == 0 and g.ci95_low == g.ci95_high == 0
    # the JSON form reads back to the same typed result (the report reads evaluation.json this way)
    assert type(out).from_json(json.loads(json.dumps(out.to_json()))) == out
    # synthetic images read from the store a batch at a time (eval.memory_mb=0): the same batches, the same result
    streamed = evaluate_augmentation(phantom_store, store, dataclasses.replace(cfg, seeds=(0,), memory_mb=0),
                                     device="cpu", low_data={0.5: low})
    assert streamed.per_seed == {arm: {"0": per["0"]} for arm, per in out.per_seed.items()}
    assert streamed.segmentation is not None
    assert streamed.segmentation.per_seed == {arm: {"0": per["0"]} for arm, per in seg.per_seed.items()}


def test_low_data_arms_need_their_own_generator(phantom_store, tmp_path):
    """No low-data store: no `real f%+synthetic` number at all; a store trained on another subset is refused."""
    import pytest

    train = load_split(phantom_store, "train")
    n = len(train["labels"])
    store = create_synthetic_store(tmp_path / "s.zarr", n, train["images"].shape[1:], n, {"run_key": "x"})
    write_shard(store, 0, train["images"], train["labels"], np.arange(n))
    cfg = EvalConfig(seeds=(0,), steps=2, channels=(8, 16), ratios=(1.0,), real_fractions=(0.5,), segmentation=False)
    out = evaluate_augmentation(phantom_store, store, cfg, device="cpu")
    assert "real 50%" in out.per_seed and "real 50%+synthetic" not in out.per_seed
    assert out.segmentation is None and "segmentation" not in out.to_json()
    wrong = create_synthetic_store(tmp_path / "w.zarr", n, train["images"].shape[1:], n,
                                   {"run_key": "w", "train_indices": list(range(n))})  # trained on everything
    write_shard(wrong, 0, train["images"], train["labels"], np.arange(n))
    with pytest.raises(ValueError, match=r"w.zarr: its generator was not trained on the real 50% subset"):
        evaluate_augmentation(phantom_store, store, cfg, device="cpu", low_data={0.5: wrong})


def test_segmentation_scores_known_cases():
    from motfm_core.evaluation.segmentation import segmentation_scores

    truth = np.zeros((2, 1, 16, 16), np.int64)
    truth[:, 0, 4:12, 4:12] = 1
    truth[:, 0, 6:8, 6:8] = 2
    same = segmentation_scores(truth, truth, 3)
    assert np.allclose(same["dice"], 1) and np.allclose(same["hd95"], 0)
    shifted = np.roll(truth, 3, axis=3)
    worse = segmentation_scores(shifted, truth, 3)
    assert (worse["dice"] < 1).all() and (worse["hd95"] >= 2.9).all()
    missed = segmentation_scores(np.zeros_like(truth), truth, 3)  # nothing predicted: dice 0, worst distance
    assert np.allclose(missed["dice"], 0) and np.allclose(missed["hd95"], np.sqrt(2) * 16)


def test_a_healthy_image_has_no_segmentation_score_and_no_warning():
    """Slices without any foreground are normal data; np.nanmean printed 'Mean of empty slice' for each, 30 times
    a run."""
    import warnings

    from motfm_core.evaluation.segmentation import segmentation_scores

    truth = np.zeros((2, 1, 16, 16), np.int64)
    truth[0, 0, 4:12, 4:12] = 1  # the second image is healthy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        scores = segmentation_scores(truth, truth, 2)
    assert scores["dice"][0] == 1.0 and np.isnan(scores["dice"][1]) and np.isnan(scores["hd95"][1])


def test_arm_plan_and_bad_eval_parameters():
    import pytest

    from motfm_core.evaluation.downstream import plan_arms

    arms = plan_arms(EvalConfig(ratios=(2.0, 0.5), synthetic_ratio=1.0, real_fractions=(0.1, 0.25)))
    assert [a.name for a in arms] == ["real", "real+synthetic x0.5", "real+synthetic", "real+synthetic x2",
                                      "synthetic", "real 25%", "real 25%+synthetic", "real 10%", "real 10%+synthetic"]
    assert {a.name: a.baseline for a in arms}["real 10%+synthetic"] == "real 10%"
    with pytest.raises(ValueError, match="real_fractions"):
        EvalConfig(real_fractions=(1.0,)).validate()
    with pytest.raises(ValueError, match="eval.ratios"):
        EvalConfig(ratios=(0.0,)).validate()


def test_incomplete_synthetic_store_is_refused(phantom_store, tmp_path):
    import pytest

    store = create_synthetic_store(tmp_path / "s.zarr", 8, (1, 16, 16), 4, {"run_key": "x"})
    write_shard(store, 0, np.zeros((4, 1, 16, 16)), np.zeros(4), np.arange(4))
    with pytest.raises(ValueError, match=r"shards \[1\] are incomplete"):
        evaluate_augmentation(phantom_store, store, EvalConfig(seeds=(0,), steps=1))


def test_nfe_arms_train_on_their_own_store_with_the_same_seeds(phantom_store, tmp_path):
    """eval.nfe_arms: a store per NFE gives `real+synthetic NFE n` and `synthetic NFE n` arms. Wiring check: an NFE
    store holding the main store's images in the same order must score exactly as the main arms do, and one
    holding other images must not."""
    from motfm_core.evaluation.downstream import plan_arms

    assert [a.name for a in plan_arms(EvalConfig(ratios=(), real_fractions=()), nfes=(4, 1), ddpm_nfes=(10,))] == [
        "real", "real+synthetic", "synthetic", "real+synthetic NFE 1", "synthetic NFE 1", "real+synthetic NFE 4",
        "synthetic NFE 4", "real+synthetic DDPM NFE 10", "synthetic DDPM NFE 10"]
    train = load_split(phantom_store, "train")
    n, shape = len(train["labels"]), train["images"].shape[1:]
    stores = {}
    for name, images in (("main", train["images"]), ("same", train["images"]), ("other", train["images"][::-1])):
        stores[name] = create_synthetic_store(tmp_path / f"{name}.zarr", n, shape, n, {"run_key": name})
        write_shard(stores[name], 0, images, train["labels"] if name != "other" else train["labels"][::-1],
                    np.arange(n))
    cfg = EvalConfig(seeds=(0,), steps=30, batch_size=16, channels=(8, 16), ratios=(), real_fractions=(),
                     segmentation=False)
    out = evaluate_augmentation(phantom_store, stores["main"], cfg, device="cpu",
                                nfe_stores={1: stores["same"], 4: stores["other"]},
                                ddpm_stores={4: stores["same"]})  # the DDPM's NFE 4 is not the flow's NFE 4
    assert out.per_seed["real+synthetic NFE 1"] == out.per_seed["real+synthetic"]
    assert out.per_seed["real+synthetic DDPM NFE 4"] == out.per_seed["real+synthetic"]
    assert out.per_seed["synthetic DDPM NFE 4"] != out.per_seed["synthetic NFE 4"]
    assert out.per_seed["synthetic NFE 1"] == out.per_seed["synthetic"]
    assert out.per_seed["synthetic NFE 4"] != out.per_seed["synthetic"]  # other images: another model
    assert {"real+synthetic NFE 1", "synthetic NFE 4"} <= set(out.gains)


def test_the_whole_evaluation_of_the_smallest_run_it_accepts(phantom_store, tmp_path):
    """One synthetic image per class and one seed (the smallest sample.samples_per_class and eval.seeds the config
    accepts): every metric reports or says there is not enough to compare; none fails (a 3D run with one sample per
    class ended after its training in 'need at least one array to concatenate')."""
    from motfm_core.config import EvalConfig
    from motfm_core.evaluation.evaluate import evaluate_run, read_evaluation

    train = load_split(phantom_store, "train")
    classes = np.unique(train["labels"])
    first = np.array([np.nonzero(train["labels"] == c)[0][0] for c in classes])
    store = create_synthetic_store(tmp_path / "synthetic" / "v0001.zarr", len(first), train["images"].shape[1:],
                                   len(first), {"run_key": "x"}, with_masks=True)
    write_shard(store, 0, train["images"][first], train["labels"][first], np.arange(len(first)),
                masks=train["masks"][first], mask_source=first)
    cfg = EvalConfig(seeds=(0,), steps=2, batch_size=4, channels=(8, 16), ratios=(1.0,), real_fractions=(),
                     seg_steps=2, seg_channels=(8, 16))
    result = read_evaluation(evaluate_run(phantom_store, store, cfg, tmp_path))
    assert result.quality.diversity is None  # one image per class: no same-class pair
    assert result.augmentation.gain["accuracy"].n == 1
    assert np.isfinite(result.quality.synthetic_vs_test.fid)


def _evaluation(real_accuracy: float, real_auroc: float, syn_swd: float, base_swd: float, gains: dict | None = None):
    """The parts of an Evaluation the report's warnings read."""
    from types import SimpleNamespace as NS

    from motfm_core.evaluation.metrics import Stat

    def stat(v):
        return Stat(mean=v, std=0.0, min=v, max=v, n=1)

    return NS(augmentation=NS(summary={"real": {"accuracy": stat(real_accuracy), "auroc": stat(real_auroc)}},
                              num_classes=3, gains=gains or {}, segmentation=None),
              quality=NS(synthetic_vs_test=NS(swd={"level0": syn_swd}), train_vs_test=NS(swd={"level0": base_swd})),
              memorisation=NS(fraction_flagged=0.0))


def test_the_report_warns_of_a_baseline_at_chance_few_test_subjects_and_an_under_trained_generator():
    from motfm_core.evaluation.sections import warning_lines

    falling = list(np.linspace(2.0, 1.0, 40))  # still falling at the end
    flat = [1.0] * 40
    lines = warning_lines(_evaluation(0.30, 0.50, 500.0, 100.0), {"a": 2, "b": 9}, falling, 180, 1200)
    assert len(lines) == 3
    assert "baseline is at or below chance" in lines[0] and "AUROC 0.500" in lines[0]
    assert "fewer than 5 subjects in class(es) a (2)" in lines[1] and "b (" not in lines[1]
    assert "under-trained" in lines[2] and "still falling" in lines[2] and "fine SWD 500" in lines[2]
    assert "--train-steps 720, or the full default of 1200" in lines[2]
    assert warning_lines(_evaluation(0.90, 0.95, 120.0, 100.0), {"a": 5, "b": 9}, flat, 1200, 1200) == []


def test_best_ratio_arm_only_when_more_than_one_ratio_ran():
    """With one ratio and an NFE arm, 'Best ratio arm' named the NFE arm: it shares the 'real+synthetic' prefix."""

    from motfm_core.evaluation.metrics import Stat
    from motfm_core.evaluation.sections import more_verdicts

    def gain(v):
        return {"accuracy": Stat(mean=v, std=0.0, min=v, max=v, n=1)}

    one = _evaluation(0.9, 0.9, 1, 1, {"real+synthetic": gain(0.01), "real+synthetic NFE 1": gain(0.02)})
    assert "Best ratio arm" not in more_verdicts(one)
    two = _evaluation(0.9, 0.9, 1, 1, {"real+synthetic": gain(0.01), "real+synthetic x2": gain(0.03)})
    assert "Best ratio arm by accuracy: real+synthetic x2 (+0.030)" in more_verdicts(two)

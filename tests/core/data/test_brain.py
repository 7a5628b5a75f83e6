"""The bundled real demo set (nilearn's MNI152; Colin27 too when mricron-data is installed)."""

import numpy as np
import pytest

from motfm_core.config import DataConfig
from motfm_core.data.brain import CLASS_NAMES, GUARD_MM, MIN_BRAIN, build_brain_mri, volumes


@pytest.fixture(scope="module")
def brain():
    return build_brain_mri(DataConfig(image_size=32))


def test_brain_set_shapes_classes_and_masks(brain):
    arrays, attrs = brain
    n = len(arrays["labels"])
    assert n >= 80 * len(volumes())
    assert arrays["images"].shape == (n, 1, 32, 32) and arrays["masks"].shape == (n, 1, 32, 32)
    assert 0 <= arrays["images"].min() and arrays["images"].max() <= 1
    assert attrs["class_names"] == CLASS_NAMES
    assert set(np.unique(arrays["masks"])) <= {0, 1, 2, 3}
    # every class in train and test; in val too when both brains are there (one brain gives too few val slabs)
    for code in (0, 1, 2) if len(volumes()) == 2 else (0, 2):
        assert set(arrays["labels"][arrays["split"] == code]) == {0, 1, 2}


def test_test_slices_never_neighbour_training_slices(brain):
    arrays, attrs = brain
    z = np.array(attrs["slice_z_mm"])
    vol = np.array([g.split("/")[0] for g in arrays["group_names"]])
    for v in set(vol):
        train = z[(vol == v) & (arrays["split"] == 0)]
        test = z[(vol == v) & (arrays["split"] == 2)]
        gap = np.abs(test[:, None] - train[None, :]).min()
        assert gap > GUARD_MM
    groups = np.array(arrays["group_names"])
    for g in set(groups):
        assert len(set(arrays["split"][groups == g])) == 1


def test_3d_blocks_cover_every_class_per_split_and_test_blocks_never_touch_training_blocks():
    arrays, attrs = build_brain_mri(DataConfig(spatial_dims=3, image_size=32, depth=8))
    n = len(arrays["labels"])
    assert arrays["images"].shape == (n, 1, 32, 32, 8) and arrays["masks"].shape == (n, 1, 32, 32, 8)
    assert n >= 250 * len(volumes()) and attrs["spacing"] == [2.0, 2.0, 2.0]
    assert set(np.unique(arrays["masks"])) <= {0, 1, 2, 3}
    assert ((arrays["masks"] > 0).mean(axis=(1, 2, 3, 4)) >= MIN_BRAIN).all()
    brain = arrays["masks"] > 0  # the intensities follow the tissue: brain bright, background dark
    assert arrays["images"][brain].mean() > 5 * arrays["images"][~brain].mean()
    for code in (0, 1, 2) if len(volumes()) == 2 else (0,):
        assert set(arrays["labels"][arrays["split"] == code]) == {0, 1, 2}, code
    # blocks of different splits in one volume are more than the guard apart along z (they span 16 mm)
    z = np.array(attrs["block_centre_mm"])[:, 2]
    vol = np.array([g.split("/")[0] for g in arrays["group_names"]])
    for v in set(vol):
        for other in (1, 2):
            a, b = z[(vol == v) & (arrays["split"] == 0)], z[(vol == v) & (arrays["split"] == other)]
            assert np.abs(a[:, None] - b[None, :]).min() > 16 + GUARD_MM
    with pytest.raises(ValueError, match="data.depth <= 12"):
        build_brain_mri(DataConfig(spatial_dims=3, image_size=32, depth=16))


def test_a_classifier_learns_the_level_bands(brain):
    """The labels carry anatomy: a small classifier trained on the train split beats chance on test by far."""
    import torch

    from motfm_core.config import EvalConfig
    from motfm_core.evaluation.metrics import classification_metrics
    from motfm_core.evaluation.supervised import predict_proba, train_classifier

    arrays, _ = brain
    tr, te = arrays["split"] == 0, arrays["split"] == 2
    model = train_classifier(arrays["images"][tr], arrays["labels"][tr], 3, EvalConfig(steps=150), 0,
                             torch.device("cpu"))
    metrics = classification_metrics(arrays["labels"][te], predict_proba(model, arrays["images"][te],
                                                                         torch.device("cpu")))
    assert metrics["accuracy"] > 0.7 and metrics["auroc"] > 0.85

"""Refusals, before anything is written, of a dataset too small to train and evaluate: too few samples per class or
split, a class missing from the val or test split."""

from __future__ import annotations

import numpy as np

from motfm_core.data.store import SPLITS
from motfm_core.errors import BadInput

__all__ = ["MIN_TEST", "MIN_TRAIN_PER_CLASS", "MIN_VAL", "check_classes_in_splits", "check_sizes"]


MIN_TRAIN_PER_CLASS, MIN_TEST, MIN_VAL = 2, 2, 1  # FID/KID need two samples per compared set


def check_sizes(source: str, labels: np.ndarray, split: np.ndarray) -> None:
    """Refuse, with the numbers needed, a dataset too small to train and evaluate: every class needs
    MIN_TRAIN_PER_CLASS training samples, the test split MIN_TEST samples (the quality metrics compare sets) and
    the validation split MIN_VAL."""
    classes = np.unique(labels)
    train = {int(c): int(((split == 0) & (labels == c)).sum()) for c in classes}
    n_val, n_test = int((split == 1).sum()), int((split == 2).sum())
    short = [f"class {c} has {n} training sample(s), needs >= {MIN_TRAIN_PER_CLASS}" for c, n in train.items()
             if n < MIN_TRAIN_PER_CLASS]
    if n_test < MIN_TEST:
        short.append(f"the test split has {n_test} sample(s), needs >= {MIN_TEST}")
    if n_val < MIN_VAL:
        short.append(f"the val split has {n_val} sample(s), needs >= {MIN_VAL}")
    if short:
        raise BadInput(f"{source}: too small to train and evaluate: {'; '.join(short)}; add data (more subjects) or "
                       "change data.val_fraction / data.test_fraction")


def check_classes_in_splits(source: str, labels: np.ndarray, split: np.ndarray, class_names: list[str],
                            groups: list[str]) -> None:
    """Refuse a dataset with a class missing from the val or test split, naming the class and the fix: its
    scores (AUROC, per-class F1) would be undefined and the report's verdict meaningless."""
    for c in np.unique(labels):
        missing = [n for n, code in SPLITS.items() if not ((split == code) & (labels == c)).any()]
        if missing:
            name = class_names[c] if c < len(class_names) else str(c)
            subjects = len({g for g, lab in zip(groups, labels) if lab == c})
            raise BadInput(f"{source}: class {name!r} has no sample in the {'/'.join(missing)} split ({subjects} "
                           "subject(s) hold it; a split by subject needs one per split): add subjects of that class, "
                           "or give the split yourself (a MedMNIST .npz keeps its own)")

import numpy as np

from motfm_core.data.phantom import phantom_image
from motfm_core.evaluation.privacy import closest_pairs_png, memorisation_audit


def test_planted_copies_are_flagged_and_fresh_samples_are_not(tmp_path):
    rng = np.random.RandomState(0)
    def make(n):
        return np.stack([phantom_image(i % 3, (16, 16), rng)[0] for i in range(n)])
    train, test, fresh = make(80), make(40), make(40)
    copies = train[[3, 17, 42]] + rng.normal(0, 0.002, train[[3, 17, 42]].shape)
    synthetic = np.concatenate([fresh, copies]).astype(np.float32)
    audit = memorisation_audit(train, test, synthetic, quantile=0.01)
    assert {40, 41, 42} <= set(audit.flagged)
    assert len(set(audit.flagged) - {40, 41, 42}) <= 1
    assert {p.train for p in audit.closest[:3]} == {3, 17, 42}
    png = closest_pairs_png(train, synthetic, audit, tmp_path / "pairs.png")
    assert png.stat().st_size > 1000

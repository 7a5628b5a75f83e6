import torch

from motfm_core.model.couplings import independent, minibatch_ot, pairing_cost


def test_ot_lowers_pairing_cost_and_permutes_noise():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 1, 4, 4, generator=g) + 1.0
    paired = minibatch_ot(x0, x1)
    assert pairing_cost(paired, x1) < pairing_cost(independent(x0, x1), x1)
    # a permutation: the same rows, reordered
    assert torch.allclose(paired.flatten(1).sort(0).values, x0.flatten(1).sort(0).values)


def test_label_aware_ot_pairs_only_within_a_label():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(12, 2, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    x0 = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 2)  # row id encoded in the values
    paired = minibatch_ot(x0, x1, labels)
    source_rows = paired[:, 0].long()
    assert torch.equal(labels[source_rows], labels)


def test_sinkhorn_lowers_pairing_cost_and_respects_labels():
    from motfm_core.model.couplings import sinkhorn

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 1, 4, 4, generator=g) + 1.0
    paired = sinkhorn(x0, x1, reg=0.01, generator=torch.Generator().manual_seed(0))
    assert pairing_cost(paired, x1) < pairing_cost(x0, x1)
    labels = torch.tensor([0, 1] * 16)
    rows = torch.arange(32, dtype=torch.float32)[:, None].repeat(1, 16).reshape(32, 1, 4, 4)
    paired = sinkhorn(rows, x1, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels[paired[:, 0, 0, 0].long()], labels)


def test_straightness_is_zero_for_straight_flows_and_positive_for_curved():
    from motfm_core.evaluation.metrics import straightness

    x0 = torch.randn(16, 2)
    target = torch.randn(16, 2)
    assert straightness(lambda x, t: target - x0, x0) < 1e-12  # constant velocity: straight lines
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert straightness(lambda x, t: x @ rot, x0) > 0.01  # rotation by 1 rad: curved trajectories

"""The distribution metrics of training/evaluate.py: Fréchet distance and within-class diversity ratio."""

from __future__ import annotations

import pytest
import torch

from training.evaluate import balanced_indices, diversity_ratio, frechet_distance, within_class_spread


def _gaussian(n: int, d: int, seed: int, mean: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + mean


def test_fd_of_identical_sets_is_zero():
    x = _gaussian(500, 16, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_closed_form_for_known_statistics():
    # means differing by m in every coordinate, isotropic stds 1 and s: FD = d·m² + d·(1 − s)²
    d, m, s = 8, 0.5, 2.0
    a, b = _gaussian(200_000, d, 1), _gaussian(200_000, d, 2, mean=m, scale=s)
    assert frechet_distance(a, b) == pytest.approx(d * m**2 + d * (1 - s) ** 2, rel=0.02)


def test_fd_grows_with_the_shift_and_is_symmetric():
    a = _gaussian(1000, 16, 3)
    fds = [frechet_distance(a, _gaussian(1000, 16, 4, mean=shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds) and fds[-1] > 10 * fds[0]
    b = _gaussian(1000, 16, 5, scale=1.5)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_fd_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="N>=2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))


def test_diversity_ratio_real_vs_real_is_one_and_drops_on_collapse():
    labels = torch.arange(10).repeat_interleave(100)
    centres = _gaussian(10, 32, 6, scale=5.0)[labels]
    real_a = centres + _gaussian(1000, 32, 7)
    real_b = centres + _gaussian(1000, 32, 8)
    assert diversity_ratio(real_a, labels, real_b, labels) == pytest.approx(1.0, abs=0.03)
    collapsed = centres + 0.3 * _gaussian(1000, 32, 9)  # samples near their class prototype
    assert diversity_ratio(collapsed, labels, real_b, labels) == pytest.approx(0.3, abs=0.03)


def test_within_class_spread_ignores_other_classes():
    feats = torch.tensor([[0.0], [2.0], [100.0], [104.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert within_class_spread(feats, labels) == pytest.approx((2.0 + 4.0) / 2)
    with pytest.raises(ValueError):
        within_class_spread(feats[:2], torch.tensor([0, 1]))


def test_balanced_indices_are_balanced_and_disjoint():
    labels = torch.arange(3).repeat(10)
    g = torch.Generator().manual_seed(0)
    first = balanced_indices(labels, 4, g)
    second = balanced_indices(labels, 4, g, exclude=first)
    assert torch.bincount(labels[first]).tolist() == [4, 4, 4]
    assert not set(first.tolist()) & set(second.tolist())
    with pytest.raises(ValueError, match="per_class=7"):
        balanced_indices(labels, 7, g, exclude=torch.cat([first, second]))

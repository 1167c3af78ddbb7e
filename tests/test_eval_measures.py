"""The set measures (data/eval_measures.py) on constructed feature sets whose order is known by construction."""
import pytest
import torch

from data.eval_measures import coverage_and_diversity, set_measures


def _real(n=200, d=16, seed=0):
    """Two classes; class c sits around +/- e_c with two modes each (+/- e_{2+c}), the spread inside a mode small."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.arange(n) % 2
    mode = (torch.arange(n) // 2) % 2  # 0 or 1
    x = 0.3 * torch.randn(n, d, generator=g)
    x[torch.arange(n), lab] += 3.0
    x[torch.arange(n), 2 + lab] += torch.where(mode == 0, 2.0, -2.0)
    return x, lab, mode


def test_copies_of_one_image_are_less_diverse_than_a_spread_set():
    real, lab, _ = _real()
    copies = torch.cat([real[lab == c][:1].repeat(10, 1) for c in (0, 1)])
    spread = torch.cat([real[lab == c][:10] for c in (0, 1)])
    syn_lab = torch.arange(20) // 10
    div_copies = coverage_and_diversity(copies, syn_lab, real, lab, 2)["div"]
    div_spread = coverage_and_diversity(spread, syn_lab, real, lab, 2)["div"]
    assert div_copies == pytest.approx(1.0, abs=1e-12)  # every pair is the same vector
    assert div_spread < div_copies - 0.3


def test_a_set_drawn_from_the_real_split_has_lower_mmd_than_a_shifted_one():
    real, lab, _ = _real()
    held, held_lab, _ = _real(seed=1)  # fresh draws from the same distribution
    drawn, shifted = held[:40], held[:40] + torch.linspace(-1, 1, 16)  # same images, moved by a fixed offset
    m_drawn = set_measures(drawn, held_lab[:40], real, lab, 2)
    m_shift = set_measures(shifted, held_lab[:40], real, lab, 2)
    assert m_drawn["mmd_linear"] < 1.0 < 2.0 < m_shift["mmd_linear"]  # the offset alone has norm 2.4
    assert m_drawn["mmd_rbf"] < m_shift["mmd_rbf"]
    # the real set against itself: no distance, full coverage
    same = set_measures(real, lab, real, lab, 2)
    assert same["mmd_linear"] == pytest.approx(0, abs=1e-12) and same["rep"] == pytest.approx(0, abs=1e-12)


def test_a_set_covering_both_modes_is_more_representative_than_one_mode():
    real, lab, mode = _real()
    both = torch.cat([real[(lab == c)][:6] for c in (0, 1)])  # modes alternate: 3 of each per class
    one = torch.cat([real[(lab == c) & (mode == 0)][:6] for c in (0, 1)])
    syn_lab = torch.arange(12) // 6
    rep_both = coverage_and_diversity(both, syn_lab, real, lab, 2)["rep"]
    rep_one = coverage_and_diversity(one, syn_lab, real, lab, 2)["rep"]
    assert rep_both < 0.5 * rep_one  # half the real images are far from a one-mode set
    assert len(coverage_and_diversity(both, syn_lab, real, lab, 2)["rep_per_class"]) == 2


def test_a_class_with_fewer_than_two_set_images_is_an_error():
    real, lab, _ = _real()
    with pytest.raises(ValueError, match="class 1: 1 set images"):
        coverage_and_diversity(real[:3], torch.tensor([0, 0, 1]), real, lab, 2)

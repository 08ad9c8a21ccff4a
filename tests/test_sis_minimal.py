"""Minimality of SIS by brute force over every subset of a 3x3 input."""

from __future__ import annotations

import itertools

import pytest
import torch

from xaiscope.analyses.sis import backselect, find_sis, sis_collection

ALL = torch.tensor(list(itertools.product([False, True], repeat=9))).view(-1, 3, 3)  # 512 pixel masks


def subset_values(f, x, mv):
    return f(torch.where(ALL.unsqueeze(1), x, torch.as_tensor(mv)))


def monotone_functions(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(1, 1, 3, 3, generator=g)
    b = float(torch.rand(1, generator=g)) * 2

    def sigmoid_sum(t):  # monotone, additive inside a monotone link
        return torch.sigmoid(4 * ((t * w).sum(dim=(1, 2, 3)) - b))

    def maximum(t):
        return t.flatten(1).max(1).values

    def top2(t):  # sum of the two largest present values
        return t.flatten(1).topk(2, dim=1).values.sum(1)

    return {"sigmoid_sum": sigmoid_sum, "max": maximum, "top2": top2}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("name", ["sigmoid_sum", "max", "top2"])
def test_every_sis_is_minimal_by_brute_force(seed, name):
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(1, 3, 3, generator=g) + 0.05
    f = monotone_functions(seed)[name]
    values = subset_values(f, x, 0.0)
    sizes = ALL.flatten(1).sum(1)
    # tau between f(empty) and f(x) so that a SIS exists and the empty set is not sufficient.
    lo, hi = float(f(torch.zeros(1, 1, 3, 3))), float(f(x[None]))
    if hi - lo < 1e-3:
        pytest.skip("degenerate draw: f barely depends on x")
    tau = lo + 0.6 * (hi - lo)
    collection = sis_collection(f, x, tau, 0.0, batch_size=5)
    assert collection, "f(x) >= tau, so there is at least one SIS"
    used = torch.zeros(3, 3, dtype=torch.bool)
    for sis in collection:
        assert not (sis.mask & used).any(), "SIS are disjoint"
        assert float(f(sis.image[None])) >= tau and sis.value >= tau, "each SIS is sufficient"
        available = ~(ALL & used).flatten(1).any(1)  # subsets of the pixels not yet used
        smaller = available & (sizes < sis.n_pixels)
        assert not (values[smaller] >= tau).any(), "no smaller subset of the remaining pixels is sufficient"
        used |= sis.mask
    # The collection stops only when the remaining input is insufficient.
    rest = torch.where(used, torch.zeros_like(x), x)
    assert float(f(rest[None])) < tau


@pytest.mark.parametrize("seed", range(8))
def test_exact_sis_is_one_minimal_for_any_function(seed):
    """For a non-monotone f (a random MLP) backward selection guarantees 1-minimality:
    removing any single unit of the SIS brings f below tau; and no proper subset that
    backward selection passed through is sufficient after the SIS step."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(9, 16, generator=g), torch.randn(16, generator=g)

    x = torch.randn(1, 3, 3, generator=g)
    mv = -0.5
    raw = (torch.tanh(x.flatten()[None] @ w1) @ w2 - torch.tanh(torch.full((1, 9), mv) @ w1) @ w2).item()
    sign = 1.0 if raw > 0 else -1.0  # orient f so that the decision holds on x

    def mlp(t):
        return torch.sigmoid(sign * torch.tanh(t.flatten(1) @ w1) @ w2)

    fx, f0 = float(mlp(x[None])), float(mlp(torch.full((1, 1, 3, 3), mv)))
    assert fx > f0
    tau = (fx + f0) / 2
    sis = find_sis(mlp, x, tau, mv)
    assert sis.value >= tau
    for u in sis.units.tolist():
        drop = sis.mask.clone()
        drop.view(-1)[u] = False
        assert float(mlp(torch.where(drop, x, torch.tensor(mv))[None])) < tau
    later = sis.backselect.curve[sis.step + 1 :]
    assert (later < tau).all()


def test_brute_force_agrees_with_backselect_curve():
    # Every value on the backward-selection curve is f of a subset in the brute-force table.
    x = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(7))
    f = monotone_functions(0)["sigmoid_sum"]
    values = subset_values(f, x, 0.0)
    r = backselect(f, x, 0.0)
    for j in range(10):
        px = r.pixels_after(j)
        idx = int((ALL == px).flatten(1).all(1).nonzero())
        assert torch.isclose(values[idx], r.curve[j])

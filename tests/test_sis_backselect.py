"""Backward selection and SIS on closed-form toy functions (hand-computed answers)."""

from __future__ import annotations

import math

import pytest
import torch

from xaiscope.analyses.sis import (
    backselect,
    find_sis,
    gradient_backselect,
    make_units,
    sis_collection,
    sis_from_backselect,
)
from xaiscope.errors import ConfigError, XaiscopeError
from xaiscope.models import count_passes


def total(b):
    return b.sum(dim=(1, 2, 3))


def maximum(b):
    return b.flatten(1).max(dim=1).values


X_SUM = torch.tensor([[[1.0, 5, 2], [0, 3, 4], [7, 1, 6]]])  # units 0..8 row-major

# Two channels; mask value (1, 0) per channel; weights per channel. Per-pixel
# contributions w0 (x0 - 1) + w1 x1 = [3, 0, 2, 5]; f(empty) = sum(w0) = 4; f(x) = 14.
X_W = torch.tensor([[[4.0, 2], [3, 4]], [[0.0, 1], [0, 2]]])
W = torch.tensor([[[1.0, 1], [1, 1]], [[2.0, -1], [1, 1]]])
MV_W = torch.tensor([1.0, 0.0]).view(2, 1, 1)


def weighted(b):
    return (b * W).sum(dim=(1, 2, 3))


X_MAX = torch.tensor([[[0.1, 0.4, 0.3], [0.8, 0.2, 0.6], [0.5, 0.7, 0.0]]])


def test_backselect_sum_order_and_values():
    r = backselect(total, X_SUM, 0.0, batch_size=4)
    assert r.order.tolist() == [3, 0, 7, 2, 4, 5, 1, 8, 6]  # smallest first, ties -> lowest index
    assert r.values.tolist() == [29, 28, 27, 25, 22, 18, 13, 7, 0]
    assert r.initial_value == 29
    assert r.curve.tolist() == [29, 29, 28, 27, 25, 22, 18, 13, 7, 0]


def test_find_sis_sum():
    s = find_sis(total, X_SUM, 10.0, 0.0)
    assert s.units.tolist() == [6, 8]  # 7 + 6 = 13 >= 10; any single pixel < 10
    assert s.value == 13 and s.step == 7 and s.size == 2 and s.n_pixels == 2
    assert s.mask.tolist() == [[False, False, False], [False, False, False], [True, False, True]]
    assert torch.equal(s.image, torch.tensor([[[0.0, 0, 0], [0, 0, 0], [7, 0, 6]]]))
    assert find_sis(total, X_SUM, 29.5, 0.0) is None  # f(x) = 29 < tau: no decision to explain


def test_sis_collection_sum():
    col = sis_collection(total, X_SUM, 10.0, 0.0)
    # {6, 8} = 13; the rest sums to 16: {1, 5, 4} = 5 + 4 + 3 = 12; the rest sums to 4 < 10.
    assert [s.units.tolist() for s in col] == [[6, 8], [1, 5, 4]]
    assert [s.value for s in col] == [13, 12]


def test_weighted_sum_with_channel_mask_value():
    r = backselect(weighted, X_W, MV_W)
    assert r.order.tolist() == [1, 2, 0, 3]
    assert r.values.tolist() == [14, 12, 9, 4]
    assert r.initial_value == 14
    assert find_sis(weighted, X_W, 10, MV_W).units.tolist() == [3, 0]  # 4 + 3 + 5 = 12
    assert find_sis(weighted, X_W, 12.5, MV_W).units.tolist() == [3, 0, 2]  # 14
    col = sis_collection(weighted, X_W, 6, MV_W)
    # {3}: 9; then {0}: 4 + 3 = 7; then {2}: 4 + 2 = 6 (= tau, sufficient); then {1}: 4 < 6.
    assert [s.units.tolist() for s in col] == [[3], [0], [2]]
    assert [s.value for s in col] == [9, 7, 6]
    # A [C, H, W] mask value gives the same answer as [C, 1, 1].
    full = MV_W.expand(2, 2, 2).clone()
    assert backselect(weighted, X_W, full).order.tolist() == [1, 2, 0, 3]


def test_max_function():
    r = backselect(maximum, X_MAX, 0.0)
    assert r.order.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 3]
    assert torch.allclose(r.values, torch.tensor([0.8] * 8 + [0.0]))
    assert find_sis(maximum, X_MAX, 0.75, 0.0).units.tolist() == [3]
    col = sis_collection(maximum, X_MAX, 0.55, 0.0)
    assert [s.units.tolist() for s in col] == [[3], [7], [5]]  # 0.8, 0.7, 0.6; then 0.5 < 0.55


def test_patch_units():
    u = make_units("patch:2", 5, 5)
    assert u.count == 9
    assert u.labels[4].tolist() == [6, 6, 7, 7, 8]
    assert u.pixel_counts().tolist() == [4, 4, 2, 4, 4, 2, 2, 2, 1]
    x = torch.arange(16.0).view(1, 4, 4)
    r = backselect(total, x, 0.0, unit="patch:2")
    # patch sums: [0+1+4+5, 2+3+6+7, 8+9+12+13, 10+11+14+15] = [10, 18, 42, 50]
    assert r.order.tolist() == [0, 1, 2, 3]
    assert r.values.tolist() == [110, 92, 50, 0]
    s = find_sis(total, x, 60, 0.0, unit="patch:2")
    assert s.units.tolist() == [3, 2] and s.n_pixels == 8 and s.value == 92


def test_sis_from_backselect_last_step_above_tau():
    # f can dip below tau and come back: the SIS is read at the LAST step with f >= tau.
    table = {
        (1, 1, 1): 5.0,
        (0, 1, 1): 4.0,
        (1, 0, 1): 1.0,
        (1, 1, 0): 2.0,
        (0, 0, 1): 1.0,
        (0, 1, 0): 6.0,
        (1, 0, 0): 0.5,
        (0, 0, 0): 0.0,
    }

    def lookup(b):
        return torch.tensor([table[tuple(int(v) for v in (row.flatten() != 0))] for row in b])

    x = torch.tensor([[[1.0, 2.0, 3.0]]])
    r = backselect(lookup, x, 0.0)
    assert r.order.tolist() == [0, 2, 1] and r.curve.tolist() == [5, 4, 6, 0]
    assert sis_from_backselect(r, 4.5) == 2
    s = find_sis(lookup, x, 4.5, 0.0)
    assert s.units.tolist() == [1] and s.value == 6


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_passes_and_calls_per_step(batch_size):
    calls = []

    class Weighted(torch.nn.Module):
        def forward(self, b):
            calls.append(b.shape[0])
            return (b * torch.arange(1.0, 10).view(1, 1, 3, 3)).sum(dim=(1, 2, 3))

    net = Weighted()
    with count_passes(net) as count:
        backselect(net, X_SUM, 0.0, batch_size=batch_size)
    u = 9
    assert count.rows == 1 + u * (u + 1) // 2  # documented: 1 + U (U + 1) / 2 = 46
    expected = [1]
    for r in range(u, 0, -1):  # step with r units left: ceil(r / B) calls covering r candidates
        expected += [min(batch_size, r - s) for s in range(0, r, batch_size)]
    assert calls == expected
    assert count.calls == 1 + sum(math.ceil(r / batch_size) for r in range(1, u + 1))


def test_gradient_backselect_linear_matches_exact_and_counts_passes():
    w = torch.tensor([[[0.5, -1.0, 2.0], [3.0, 0.25, -0.5], [1.5, 4.0, 1.0]]])

    class Lin(torch.nn.Module):
        def forward(self, b):
            return (b * w).sum(dim=(1, 2, 3))

    net = Lin()
    x = torch.full((1, 3, 3), 2.0)
    exact = backselect(net, x, 0.0)
    with count_passes(net) as count:
        grad = gradient_backselect(net, x, 0.0, k=1)
    assert grad.order.tolist() == exact.order.tolist()
    assert torch.allclose(grad.values, exact.values)
    assert count.rows == 9 + 1 and count.calls == 10  # ceil(U / k) forward+backward, + 1 forward
    with count_passes(net) as count:
        g3 = gradient_backselect(net, x, 0.0, k=4)
    assert count.rows == math.ceil(9 / 4) + 1
    assert g3.removed.tolist() == [4, 8, 9]
    assert set(g3.order[:4].tolist()) == set(exact.order[:4].tolist())
    s = find_sis(net, x, 10.0, 0.0, method="gradient", k=1)
    assert s.units.tolist() == find_sis(net, x, 10.0, 0.0).units.tolist()


def test_refuses_when_fully_masked_input_reaches_tau():
    with pytest.raises(ConfigError, match=r"fully masked input already reaches tau=4"):
        sis_collection(weighted, X_W, 4, MV_W)
    with pytest.raises(ConfigError, match=r"fully masked input already reaches tau"):
        find_sis(total, X_SUM, -1.0, 0.0)


@pytest.mark.parametrize("unit", ["pixels", "patch", "patch:0", "patch:x", "patch:-2", "superpixel:3", 4])
def test_unknown_unit(unit):
    with pytest.raises(XaiscopeError, match=r"unit"):
        backselect(total, X_SUM, 0.0, unit=unit)


def test_bad_inputs():
    with pytest.raises(ConfigError, match=r"larger than the 3x3 image"):
        backselect(total, X_SUM, 0.0, unit="patch:4")
    with pytest.raises(ConfigError, match=r"mask value of shape \[2, 1, 1\] does not fit"):
        backselect(total, X_SUM, torch.zeros(2, 1, 1))
    with pytest.raises(ConfigError, match=r"batch_size must be a positive integer"):
        backselect(total, X_SUM, 0.0, batch_size=0)
    with pytest.raises(ConfigError, match=r"one image \[C, H, W\]"):
        backselect(total, torch.zeros(2, 1, 3, 3), 0.0)
    with pytest.raises(ConfigError, match=r"tau must be finite"):
        find_sis(total, X_SUM, float("nan"), 0.0)
    with pytest.raises(ConfigError, match=r"Unknown selection method 'greedy'"):
        sis_collection(total, X_SUM, 10.0, 0.0, method="greedy")
    with pytest.raises(ConfigError, match=r"k \(units removed per step\)"):
        gradient_backselect(total, X_SUM, 0.0, k=0)
    with pytest.raises(XaiscopeError, match=r"vector \[1\]"):
        backselect(lambda b: b.sum(dim=(2, 3)).repeat(1, 2), X_SUM, 0.0)

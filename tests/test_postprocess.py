"""Channel pooling and normalisation of attributions, with hand-computed answers."""

from __future__ import annotations

import pytest
import torch

from xaiscope import explain
from xaiscope.errors import MethodError

A = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # [1, 2, 1, 2]: two channels, 1x2 image


@pytest.mark.parametrize(
    "pool, expected",
    [
        ("sum", [[-2.0, -1.5]]),
        ("mean", [[-1.0, -0.75]]),
        ("max_abs", [[-3.0, -2.0]]),
        ("l2", [[10.0**0.5, 4.25**0.5]]),
        ("pos_sum", [[1.0, 0.5]]),
    ],
)
def test_pooling(pool, expected):
    torch.testing.assert_close(explain.pool(A, pool), torch.tensor([expected]))


def test_signed_and_absolute():
    torch.testing.assert_close(explain.postprocess(A, pool="sum", signed=True), torch.tensor([[[-2.0, -1.5]]]))
    torch.testing.assert_close(explain.postprocess(A, pool="sum"), torch.tensor([[[2.0, 1.5]]]))


def test_normalisations_by_hand():
    m = torch.tensor([[[1.0, -4.0], [2.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]])  # two 2x2 maps
    torch.testing.assert_close(explain.normalise(m, "max"), m / torch.tensor([4.0, 1.0]).view(2, 1, 1))
    torch.testing.assert_close(explain.normalise(m, "dataset_max"), m / 4.0)
    torch.testing.assert_close(explain.normalise(m, "sum_to_one"), m / torch.tensor([8.0, 2.0]).view(2, 1, 1))
    torch.testing.assert_close(explain.normalise(m, "none"), m)
    # p99 of 4 magnitudes: the largest (index round(0.99 * 3) = 3 of the sorted values)
    torch.testing.assert_close(explain.normalise(m, "p99"), m / torch.tensor([4.0, 1.0]).view(2, 1, 1))


def test_p99_clips_outliers():
    m = torch.ones(1, 10, 10)
    m[0, 0, 0] = 100.0
    out = explain.normalise(m, "p99")
    assert float(out.max()) == 1.0 and float(out[0, 5, 5]) == 1.0
    d = explain.normalise(torch.cat([m, 2 * torch.ones(1, 10, 10)]), "dataset_p99")
    assert float(d[0, 5, 5]) == pytest.approx(0.5) and float(d[1, 5, 5]) == 1.0


def test_zero_maps_stay_zero_and_input_is_not_modified():
    a = torch.zeros(2, 3, 4, 4)
    for how in explain.NORMALISATIONS:
        out = explain.postprocess(a, normalise=how)
        assert torch.equal(out, torch.zeros(2, 4, 4)), how
    b = A.clone()
    explain.postprocess(b, normalise="max")
    assert torch.equal(b, A)


def test_unknown_pooling_and_normalisation():
    with pytest.raises(MethodError, match="Unknown pooling 'median'"):
        explain.pool(A, "median")
    with pytest.raises(MethodError, match="Unknown normalisation 'z'"):
        explain.normalise(explain.pool(A), "z")


@pytest.mark.parametrize("heat", [-torch.rand(8, 8) - 0.1, torch.zeros(8, 8), torch.full((8, 8), float("nan"))])
def test_overlay_draws_maps_without_positive_values(tmp_path, heat):
    """An all-negative, all-zero or all-NaN map still gives a PNG (the colour range stays valid)."""
    from xaiscope.plotting import save_overlay

    path = save_overlay(torch.rand(1, 8, 8), heat, tmp_path / "o.png")
    assert path.stat().st_size > 100

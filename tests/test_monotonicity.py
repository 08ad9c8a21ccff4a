"""Monotonicity (Arya et al. 2019; Quantus' definition with the image's pixels added back) in
closed form on a linear model: adding pixels back in order of increasing attribution raises
the target's softmax exactly when each step's summed contribution is >= 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiscope import evaluate


class Linear(torch.nn.Module):
    """Logits ``[0, sum_i w_i x_i]``: the class-1 softmax is sigmoid of the weighted sum."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.flatten().clone())

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(z), z], 1)


def expected(x: np.ndarray, w: np.ndarray, a: np.ndarray, k: int) -> float:
    """1 if the curve never decreases: the fill (``black``: the image's minimum m) everywhere,
    pixels added back ``k`` at a time by increasing |a|, each changing the logit by
    w_i (x_i - m); the first point is the first step (as Quantus), so the step sums from the
    second step on must all be >= 0."""
    order = np.argsort(np.abs(a).ravel(), kind="stable")
    c = (w * (x - x.min())).ravel()[order]
    sums = np.add.reduceat(c, np.arange(0, c.size, k))
    return float(np.all(sums[1:] >= 0))


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_monotonicity_closed_form_on_a_linear_model(k):
    g = torch.Generator().manual_seed(k)
    n = 64
    x = torch.rand(n, 1, 4, 4, generator=g) + 0.1
    w = torch.randn(1, 4, 4, generator=g) + 0.6  # mostly positive weights, a few negative
    a = torch.randn(n, 1, 4, 4, generator=g)  # distinct |a|: no ties in the order
    net = Linear(w)
    # the logit is the weighted sum itself (the softmax saturates in float32 and hides small drops)
    metric = evaluate.get("monotonicity", features_in_step=k, output="logit")
    got = metric(net, x, torch.ones(n, dtype=torch.long), a).numpy()
    want = [expected(x[i, 0].numpy(), w[0].numpy(), a[i, 0].numpy(), k) for i in range(n)]
    np.testing.assert_array_equal(got, want)
    if k == 16:
        assert (got == 1).all()  # one step: a curve of one point never decreases


def test_monotonicity_positive_contributions_always_pass_and_a_negative_one_fails():
    x = torch.full((3, 1, 4, 4), 0.5)
    x[:, :, 0, 0] = 0.0  # the image's minimum: the black fill
    a = torch.arange(48, dtype=torch.float32).view(3, 1, 4, 4) + 1.0
    y = torch.ones(3, dtype=torch.long)
    assert evaluate.get("monotonicity")(Linear(torch.ones(1, 4, 4)), x, y, a).tolist() == [1.0, 1.0, 1.0]
    w = torch.ones(1, 4, 4)
    w[0, 2, 2] = -1.0  # one pixel lowers the class-1 score when it is added back
    assert evaluate.get("monotonicity")(Linear(w), x, y, a).tolist() == [0.0, 0.0, 0.0]
    # in a step of 4 with three positive pixels, the negative one is outweighed
    assert evaluate.get("monotonicity", features_in_step=4)(Linear(w), x, y, a).tolist() == [1.0, 1.0, 1.0]

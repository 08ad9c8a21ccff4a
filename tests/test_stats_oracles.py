"""evaluate.stats against the maintained implementations it stands in for.

The metrics keep batched torch versions (one call for a whole batch, on the data's
device, with no copy to the CPU) of statistics that SciPy, scikit-image and scikit-learn
compute one row at a time on NumPy arrays; these tests hold them to the libraries' numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity
from sklearn.metrics import average_precision_score, roc_auc_score

from xaiscope.evaluate import stats
from xaiscope.evaluate.randomisation import discrete_entropy


def _rows(n=6, k=200, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, k, generator=g, dtype=torch.float64)
    b = torch.rand(n, k, generator=g, dtype=torch.float64) + 0.3 * a
    if ties:
        a, b = (a * 7).floor(), (b * 5).floor()
    return a, b


@pytest.mark.parametrize("shape", [(5, 16, 16), (4, 9, 30), (3, 40), (2, 8, 9, 10)])
def test_ssim_is_skimage_structural_similarity(shape):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=g, dtype=torch.float64)
    want = []
    for u, v in zip(a.numpy(), b.numpy()):
        rng = max(u.max(), v.max()) - min(u.min(), v.min())
        want.append(structural_similarity(u, v, data_range=rng, win_size=7))
    np.testing.assert_allclose(stats.ssim(a, b).numpy(), want, rtol=0, atol=1e-12)


def test_ssim_of_maps_smaller_than_the_window_is_nan():
    assert torch.isnan(stats.ssim(torch.rand(2, 5, 20), torch.rand(2, 5, 20))).all()


@pytest.mark.parametrize("ties", [False, True])
def test_rank_pearson_spearman_are_scipy(ties):
    a, b = _rows(ties=ties)
    np.testing.assert_array_equal(stats.rank(a).numpy(), scipy.stats.rankdata(a.numpy(), axis=1))
    np.testing.assert_allclose(
        stats.pearson(a, b).numpy(), scipy.stats.pearsonr(a.numpy(), b.numpy(), axis=1).statistic, atol=1e-12
    )
    want = [scipy.stats.spearmanr(u, v).statistic for u, v in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(stats.spearman(a, b).numpy(), want, atol=1e-12)


def test_constant_rows_correlate_as_nan_like_scipy():
    a, b = _rows(n=2)
    a[0] = 0.5
    assert torch.isnan(stats.pearson(a, b)[0]) and torch.isnan(stats.spearman(a, b)[0])
    assert not torch.isnan(stats.pearson(a, b)[1])


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_average_precision_are_scikit_learn(ties):
    score, _ = _rows(ties=ties)
    label = torch.rand(score.shape, generator=torch.Generator().manual_seed(3)) > 0.7
    s, lab = score.numpy(), label.numpy()
    np.testing.assert_allclose(stats.auroc(score, label).numpy(), [roc_auc_score(t, u) for t, u in zip(lab, s)])
    np.testing.assert_allclose(
        stats.average_precision(score, label).numpy(), [average_precision_score(t, u) for t, u in zip(lab, s)]
    )


def test_trapz_is_numpy_trapezoid():
    a, _ = _rows()
    np.testing.assert_allclose(stats.trapz(a, dx=0.1).numpy(), np.trapezoid(a.numpy(), dx=0.1, axis=1))


@pytest.mark.parametrize("bins", [2, 10, 100])
def test_discrete_entropy_is_scipy_entropy_of_numpy_histogram(bins):
    a, _ = _rows(ties=bins == 10)
    a[0] = 0.25  # a constant row: numpy bins it in [v - 0.5, v + 0.5]
    want = [scipy.stats.entropy(np.histogram(u, bins)[0]) for u in a.numpy()]
    np.testing.assert_allclose(discrete_entropy(a, bins).numpy(), want, atol=1e-12)


def test_agreement_closed_form():
    label = torch.tensor([0, 0, 1, 1])
    close = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert stats.agreement(label, close).tolist() == [0.5, 1.0, 0.5, 0.0]

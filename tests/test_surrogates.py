"""LIME and KernelSHAP: exact on models additive in the superpixels, agree with Captum, their
sampling laws, batch-size invariance and pass counts."""

from __future__ import annotations

import captum.attr as ca
import numpy as np
import pytest
import torch
from torch import nn

from xaiscope import explain
from xaiscope.explain.surrogate import ENDPOINT_WEIGHT, cosine_kernel, explain_one, kernel_shap_samples
from xaiscope.models import count_passes


class Linear(nn.Module):
    """``f_c(x) = sum(v_c * x) + b_c``: additive in any partition of the pixels."""

    def __init__(self, shape, classes: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.v = nn.Parameter(torch.randn(classes, *shape, generator=g))
        self.b = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.v.flatten(1).t() + self.b


def _grid(shape, side):
    ids = torch.zeros(shape, dtype=torch.long)
    idx = torch.meshgrid(*[torch.arange(n) // side for n in shape], indexing="ij")
    per = [-(-n // side) for n in shape]
    for d, i in enumerate(idx):
        ids = ids * per[d] + i
    return ids


@pytest.mark.parametrize("spatial", [(8, 8), (4, 6, 6)])
def test_kernel_shap_is_exact_on_an_additive_model_and_matches_captum(spatial):
    """For f additive over superpixels the Shapley value of superpixel k is its own term
    sum_{p in k} v_p (x_p - b_p); the weighted least-squares fit recovers it exactly."""
    x = torch.rand(1, 2, *spatial, generator=torch.Generator().manual_seed(1))
    model = Linear(x.shape[1:]).eval()
    seg = _grid(spatial, 4 if len(spatial) == 2 else 3)
    base = torch.zeros_like(x)
    torch.manual_seed(0)
    ours = explain_one(model, x, torch.tensor([1]), seg, base, kind="kernel_shap", n_samples=60,
                       batch_size=7, surrogate="ols", alpha=0.0)  # fmt: skip
    terms = (model.v[1] * x[0]).sum(0).detach()  # per pixel, channels summed
    exact = torch.zeros(int(seg.max()) + 1).index_add_(0, seg.flatten(), terms.flatten())
    assert ours.shape == x.shape and torch.allclose(ours[0, 0], ours[0, 1])
    torch.testing.assert_close(ours[0, 0], exact[seg], atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)
    captum = ca.KernelShap(model).attribute(x, baselines=base, target=1, n_samples=60,
                                            feature_mask=seg.expand_as(x[0]).unsqueeze(0))  # fmt: skip
    torch.testing.assert_close(ours, captum.detach(), atol=1e-4, rtol=1e-4)


def test_lime_without_regularisation_is_exact_on_an_additive_model_and_matches_captum():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    model = Linear(x.shape[1:]).eval()
    seg = _grid((8, 8), 4)
    torch.manual_seed(0)
    ours = explain_one(model, x, torch.tensor([0]), seg, torch.zeros_like(x), kind="lime", n_samples=40,
                       batch_size=16, surrogate="ridge", alpha=1e-9)  # fmt: skip
    exact = torch.zeros(4).index_add_(0, seg.flatten(), (model.v[0, 0] * x[0, 0]).detach().flatten())
    torch.testing.assert_close(ours[0, 0], exact[seg], atol=1e-5, rtol=1e-5)
    from captum._utils.models.linear_model import SkLearnRidge

    captum = ca.Lime(model, interpretable_model=SkLearnRidge(alpha=1e-9)).attribute(
        x, target=0, n_samples=40, feature_mask=seg.view(1, 1, 8, 8), baselines=torch.zeros_like(x)
    )
    torch.testing.assert_close(ours, captum.detach(), atol=1e-4, rtol=1e-4)


def test_kernel_shap_sampling_law_and_lime_kernel():
    torch.manual_seed(0)
    k, n = 6, 20002
    z, w = kernel_shap_samples(n, k, torch.device("cpu"))
    assert z[0].all() and not z[1].any() and w[:2].tolist() == [ENDPOINT_WEIGHT] * 2 and (w[2:] == 1).all()
    sizes = z[2:].sum(1)
    assert sizes.min() >= 1 and sizes.max() <= k - 1
    m = np.arange(1, k)
    p = (k - 1) / (m * (k - m))
    p /= p.sum()
    freq = np.bincount(sizes.numpy(), minlength=k)[1:] / (n - 2)
    assert np.abs(freq - p).max() < 0.015  # multinomial sampling error at n = 20,000
    assert abs(float(z[2:].double().mean(0).std())) < 0.01  # every superpixel equally often
    x = torch.ones(1, 1, 2, 2)
    xz = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]]).view(2, 1, 2, 2)
    d = 1 - 2 / (2 * np.sqrt(2))  # cosine distance of (1,1,1,1) and (1,1,0,0)
    torch.testing.assert_close(cosine_kernel(x, xz), torch.tensor([1.0, np.exp(-(d**2) / 2)], dtype=torch.float64))


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_batch_size_changes_neither_maps_nor_passes(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(12, 2)).eval()  # fmt: skip
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 1])
    maps = []
    for bs in (5, 64):
        ex = explain.get(method, n_samples=24, n_segments=6, batch_size=bs, seed=2)
        with count_passes(net) as c:
            maps.append(ex(net, x, y))
        assert c.rows == 24 * 3 == ex.passes((1, 16, 16)) * 3 and c.largest_call <= bs
    torch.testing.assert_close(maps[0], maps[1], atol=1e-6, rtol=1e-5)


def test_segmentation_ahead_equals_segmentation_in_place_and_keeps_the_voxel_spacing():
    from xaiscope.explain.perturbation import segment_ahead, superpixels, voxel_spacing

    x = torch.rand(5, 1, 8, 10, 12, generator=torch.Generator().manual_seed(4))
    with voxel_spacing((4.0, 1.0, 1.0)):
        ahead = list(segment_ahead(x, 6, 0.5))
        here = [superpixels(x[i : i + 1], 6, 0.5)[0, 0] for i in range(5)]
    plain = [superpixels(x[i : i + 1], 6, 0.5)[0, 0] for i in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(ahead, here))
    assert not all(torch.equal(a, b) for a, b in zip(ahead, plain))  # the spacing reached the thread

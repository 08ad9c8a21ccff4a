"""Attribution methods on volumes ``[N, C, D, H, W]``: every method on a small Conv3d model or
its clear refusal, closed forms of the 3D baselines, IG completeness, pass counts in voxels,
supervoxels with the voxel spacing, and LRP's conservation through 3D residual blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fixture_models import conv3d
from xaiscope import explain
from xaiscope.errors import MethodError
from xaiscope.explain.perturbation import superpixels, voxel_spacing
from xaiscope.models import count_passes, load

CHEAP = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "deeplift_shap": {"n_baselines": 2},
    "gradient_shap": {"n_samples": 3, "n_baselines": 2},
    "occlusion": {"window": 4, "stride": 4},
    "feature_ablation": {"patch": 4},
    "lime": {"n_samples": 8, "n_segments": 8},
    "kernel_shap": {"n_samples": 8, "n_segments": 8},
}
#: every method that explains volumes (the CAM family's maps are checked by hand in test_cam_volumes.py)
VOLUME_METHODS = [n for n in explain.names() if explain.get_class(n).volumes]


def conv3d_model(activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    return conv3d(activation=activation, seed=0)


def _volumes(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 8, 12, 10, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", VOLUME_METHODS)
def test_every_method_explains_a_conv3d_model(method):
    x, y = _volumes(), torch.tensor([0, 1])
    a = explain.get(method, **CHEAP.get(method, {}))(conv3d_model(), x, y)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()


def test_only_fullgrad_and_the_transformer_methods_refuse_volumes_with_one_sentence():
    images_only = ["attention_rollout", "attn_lrp", "fullgrad", "generic_attention"]
    assert sorted(set(explain.names()) - set(VOLUME_METHODS)) == images_only
    for name in images_only:
        with pytest.raises(MethodError, match=rf"{name} explains images \[N, C, H, W\] only"):
            explain.get(name)(conv3d_model(), _volumes(), torch.tensor([0, 1]))


def test_integrated_gradients_is_complete_on_a_smooth_3d_model():
    model = conv3d_model(nn.Softplus)
    x, y = _volumes(), torch.tensor([1, 0])
    a = explain.get("integrated_gradients", n_steps=256, baseline="zero")(model, x, y)
    with torch.no_grad():
        gap = model(x).gather(1, y.view(-1, 1)) - model(torch.zeros_like(x)).gather(1, y.view(-1, 1))
    assert torch.allclose(a.flatten(1).sum(1), gap.squeeze(1), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("occlusion", {"window": 4, "stride": 4}, 1 + 2 * 3 * 3),  # D=8, H=12, W=10: a clipped last window along W
        ("occlusion", {"window": 4, "stride": 2}, 1 + 3 * 5 * 4),
        ("feature_ablation", {"patch": 4}, 1 + 2 * 3 * 3),  # ceil(10 / 4) = 3 cubes along W
        ("lime", {"n_samples": 12, "n_segments": 6}, 12),
    ],
)
def test_pass_counts_hold_in_voxels(method, params, expected):
    model, x = conv3d_model(), _volumes(1)
    m = explain.get(method, batch_size=7, **params)
    assert m.passes(tuple(x.shape[1:])) == expected
    with count_passes(model) as count:
        m(model, x, torch.tensor([1]))
    assert count.rows == expected


def test_sobel_and_laplace_in_3d_have_their_closed_forms():
    d, h, w = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), torch.arange(8.0), indexing="ij")
    ramp = (3 * w + 2 * d)[None, None]
    sobel = explain.get("sobel")(conv3d_model(), ramp, torch.tensor([0]))[0, 0, 1:-1, 1:-1, 1:-1]
    # derivative [-1, 0, 1] smoothed by [1, 2, 1] x [1, 2, 1]: 16 x (2 x slope) along each axis
    assert torch.allclose(sobel, torch.full_like(sobel, 32.0 * (3**2 + 2**2) ** 0.5))
    quad = (w**2 + 2 * h**2)[None, None]
    lap = explain.get("laplace")(conv3d_model(), quad, torch.tensor([0]))[0, 0, 1:-1, 1:-1, 1:-1]
    assert torch.allclose(lap, torch.full_like(lap, 2.0 + 4.0))


def test_supervoxels_follow_the_volume_and_its_voxel_spacing():
    x = torch.zeros(1, 1, 8, 16, 16)
    x[..., 8:] = 1.0  # two halves along W
    seg = superpixels(x, n_segments=8, compactness=0.1)
    assert seg.shape == (1, 1, 8, 16, 16)
    left, right = set(seg[..., :8].unique().tolist()), set(seg[..., 8:].unique().tolist())
    assert not left & right  # no supervoxel crosses the edge
    iso = superpixels(torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0)), 16, 10.0)
    with voxel_spacing((8.0, 1.0, 1.0)):  # slices 8 mm apart: supervoxels thin along D
        thick = superpixels(torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0)), 16, 10.0)
    assert not torch.equal(iso, thick)

    def depth(seg):
        return sum(len(seg[0, 0, :, i, j].unique()) for i in range(16) for j in range(16))

    assert depth(thick) > depth(iso)


@pytest.mark.slow
def test_lrp_conserves_relevance_through_3d_residual_blocks():
    from zennit.canonizers import SequentialMergeBatchNorm

    from xaiscope.explain import lrp
    from xaiscope.explain.lrp_canonizers import VideoResNetCanonizer

    model = load("torchvision:r3d_18", num_classes=2, in_channels=1)
    nn.init.zeros_(model.fc.bias)  # batch norm at its initial statistics adds no bias either
    x, y = torch.rand(2, 1, 4, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1])
    with torch.no_grad():
        logit = model(x).gather(1, y.view(-1, 1)).squeeze(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = explain.get("lrp_epsilon_plus_flat")(model, x, y)
    assert torch.allclose(a.flatten(1).sum(1), logit, rtol=1e-3, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # canonizers undone
    assert isinstance(lrp.canonizers_for(model)[0], VideoResNetCanonizer)
    # the in-place shortcut addition without the canonizer's Sum rule counts relevance twice
    merged_only = lrp.canonizers_for
    try:
        lrp.canonizers_for = lambda m: [SequentialMergeBatchNorm()]
        b = explain.get("lrp_epsilon_plus_flat")(model, x, y)
    finally:
        lrp.canonizers_for = merged_only
    assert not torch.allclose(b.flatten(1).sum(1), logit, rtol=0.1)


def test_a_failing_canonizer_leaves_the_weights_as_they_were(monkeypatch):
    from zennit.canonizers import SequentialMergeBatchNorm

    from xaiscope.explain import lrp

    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 1, 4, 4, 4))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class Broken(SequentialMergeBatchNorm):  # merges, then fails half-way
        def apply(self, root_module):
            out = super().apply(root_module)
            raise RuntimeError("broken canonizer")
            return out

    monkeypatch.setattr(lrp, "canonizers_for", lambda m: [Broken()])
    with pytest.raises(RuntimeError, match="broken canonizer"):
        explain.get("lrp_epsilon_plus_flat")(model, torch.rand(1, 1, 4, 4, 4), torch.tensor([0]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

"""CAMs on volumes ``[N, C, D, H, W]`` through a ``Conv3d`` layer: shapes, Grad-CAM, Score-CAM
and Ablation-CAM against their formulas by hand (weights over the three spatial dims,
trilinear upsampling), pytorch-grad-cam where it handles 3D, pass counts, and one sentence for
the methods that explain images only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixture_models import conv3d
from xaiscope import explain
from xaiscope.errors import MethodError
from xaiscope.explain.layers import find_layer
from xaiscope.models import count_passes

VOLUME_CAMS = [
    "gradcam",
    "gradcam_plus_plus",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
]


def net3d() -> nn.Module:
    """The last Conv3d (``3``) gives maps of half the input's size in each of D, H, W."""
    return conv3d(num_classes=3, in_channels=2, widths=(4, 6), seed=0)


def volumes(n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 2, 6, 8, 10, generator=torch.Generator().manual_seed(seed))
    return x, torch.arange(n) % 3


def layer_outputs(net, x, y, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations and the gradients of the target logits with respect to them."""
    store = {}
    h = layer.register_forward_hook(lambda m, a, out: store.__setitem__("a", out))
    out = net(x)
    h.remove()
    (g,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), store["a"])
    return store["a"].detach(), g


def minmax(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's per-volume scaling, applied twice as it does (see test_cam_family.py)."""
    for _ in range(2):
        m = m - m.min(axis=(1, 2, 3), keepdims=True)
        m = m / (1e-7 + m.max(axis=(1, 2, 3), keepdims=True))
    return m


def trilinear(cam: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(cam, size=tuple(size), mode="trilinear", align_corners=False)


def test_auto_layer_is_the_last_conv3d():
    assert find_layer(net3d(), "auto", "gradcam")[0] == "3"


@pytest.mark.parametrize("method", VOLUME_CAMS)
def test_every_cam_explains_volumes_with_one_plus_k_or_one_pass(method):
    """Raw attributions ``[N, C, D, H, W]`` (the map on each channel), maps ``[N, D, H, W]``;
    the counted passes equal the declared ones (K = 6 channels for scorecam, ablationcam);
    batch size changes nothing."""
    net, (x, y) = net3d(), volumes()
    ex = explain.get(method, batch_size=4)
    with count_passes(net) as count:
        a = ex(net, x, y)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a[:, 0], a[:, 1]) and a.abs().sum() > 0
    assert explain.postprocess(a, normalise="max").shape == (3, 6, 8, 10)
    assert ex.passes(tuple(x.shape[1:]), net) == (7 if method in ("scorecam", "ablationcam") else 1)
    assert count.rows == ex.passes(tuple(x.shape[1:]), net) * 3 and count.largest_call <= 4
    torch.testing.assert_close(explain.get(method, batch_size=1)(net, x, y), a, rtol=1e-5, atol=1e-6)


def test_gradcam_on_volumes_equals_the_formula_by_hand():
    """ReLU(sum_k mean_dhw(g_k) A_k) at the last Conv3d, upsampled trilinearly; HiResCAM,
    LayerCAM and XGrad-CAM from the same activations and gradients."""
    net, (x, y) = net3d(), volumes()
    a, g = layer_outputs(net, x, y, net[3])
    assert a.shape == (3, 6, 3, 4, 5)
    want = {
        "gradcam": (g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True),
        "hirescam": (g * a).sum(1, keepdim=True),
        "layercam": (g.clamp_min(0) * a).sum(1, keepdim=True),
        "xgradcam": ((g * a).sum((2, 3, 4), keepdim=True) / (a.sum((2, 3, 4), keepdim=True) + 1e-7) * a).sum(
            1, keepdim=True
        ),
    }
    for method, cam in want.items():
        got = explain.get(method)(net, x, y)
        torch.testing.assert_close(got[:, :1], trilinear(cam.clamp_min(0), x.shape[2:]), rtol=1e-4, atol=1e-6)


def test_scorecam_and_ablationcam_on_volumes_equal_the_formulas_by_hand():
    """Score-CAM: masks A_k upsampled trilinearly (aligned corners) and min-max scaled, weights
    the softmax over k of the masked volumes' logits; Ablation-CAM: (y - y_k) / y with channel
    k of the last Conv3d zeroed. Both: ReLU(sum_k w_k A_k), upsampled trilinearly."""
    net, (x, y) = net3d(), volumes(2, seed=4)
    a, _ = layer_outputs(net, x, y, net[3])
    with torch.no_grad():
        base = net(x).gather(1, y[:, None])
        masked, ablated = [], []
        for k in range(6):
            h = F.interpolate(a[:, k : k + 1], size=x.shape[2:], mode="trilinear", align_corners=True)
            low, high = h.amin(dim=(2, 3, 4), keepdim=True), h.amax(dim=(2, 3, 4), keepdim=True)
            masked.append(net(x * (h - low) / (high - low + 1e-8)).gather(1, y[:, None]))
            hook = net[3].register_forward_hook(lambda m, i, out, k=k: out.index_fill(1, torch.tensor([k]), 0.0))
            ablated.append(net(x).gather(1, y[:, None]))
            hook.remove()
    weights = {"scorecam": torch.cat(masked, 1).softmax(1), "ablationcam": (base - torch.cat(ablated, 1)) / base}
    for method, w in weights.items():
        cam = (w[:, :, None, None, None] * a).sum(1, keepdim=True).clamp_min(0)
        got = explain.get(method)(net, x, y)
        torch.testing.assert_close(got[:, :1], trilinear(cam, x.shape[2:]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam", "eigencam"])
def test_cams_on_volumes_equal_pytorch_grad_cam_where_it_handles_3d(method):
    """grad-cam 1.5.4 explains volumes with GradCAM, HiResCAM, LayerCAM and EigenCAM; it resizes
    3D maps with SciPy's cubic-spline ``zoom``, not trilinearly, so they are compared at the
    first Conv3d, which keeps the input's size (zoom by 1 returns the map). Its GradCAMPlusPlus
    and XGradCAM sum over two of the three spatial dims (a broadcasting error in 3D), its
    ScoreCAM upsamples with a 2D-only module and its AblationCAM repeats 4D tensors, so those
    four fail on volumes and are checked by hand above."""
    gc = pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package (test oracle)")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, (x, y) = net3d(), volumes()
    oracle = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}[method]
    with getattr(gc, oracle)(model=net, target_layers=[net[0]]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in y])
    if method != "eigencam":
        ours = explain.get(method, layer="0")(net, x, y)[:, 0].numpy()
        assert np.abs(minmax(ours) - theirs).max() < 1e-4
        return
    p = explain.get(method, layer="0", relu=False)(net, x, y)[:, 0].numpy()  # sign left open by the SVD
    for i in range(len(p)):
        assert min(np.abs(minmax(np.maximum(s * p[i : i + 1], 0)) - theirs[i]).max() for s in (1, -1)) < 1e-4


def test_methods_for_images_only_are_one_sentence_on_volumes():
    net, (x, y) = net3d(), volumes(2)
    with pytest.raises(
        MethodError,
        match=r"fullgrad explains images \[N, C, H, W\] only, not volumes .*"
        r"every method but attention_rollout, generic_attention, attn_lrp explains volumes",
    ):
        explain.get("fullgrad")(net, x, y)
    kept, left_out = explain.applicable(["cams"], net)
    assert kept == [n for n in explain.expand(["cams"]) if n != "fullgrad"]
    assert set(left_out) == {"fullgrad"}
    assert (
        "this model has 3D convolutions; every method but attention_rollout, generic_attention, attn_lrp explains volumes"
        in left_out["fullgrad"]
    )
    with pytest.raises(MethodError, match="fullgrad explains images"):
        explain.applicable(["fullgrad"], net)

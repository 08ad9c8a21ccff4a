"""Closed-form properties of attribution methods and agreement with Captum / Zennit."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from torch import nn

from xaiscope import explain
from xaiscope.models import build


def _target(model, x, y):
    with torch.no_grad():
        return model(x).gather(1, y.view(-1, 1)).squeeze(1)


def _avgpool_net(bias: bool = True) -> nn.Module:
    """A ReLU CNN with average pooling only (DeepLIFT's summation-to-delta is exact there;
    Captum's max-pool rule passes gradients and breaks it)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2, bias=bias),
    ).eval()


def test_integrated_gradients_completeness_within_one_percent(gray_batch):
    torch.manual_seed(1)
    net = build("small_cnn", width=8).eval()
    x, y = gray_batch
    a = explain.get("integrated_gradients", n_steps=64)(net, x, y)
    delta = _target(net, x, y) - _target(net, torch.zeros_like(x), y)
    assert delta.abs().min() > 1e-3  # the check is meaningful: outputs do differ
    total = a.sum(dim=(1, 2, 3))
    assert torch.all((total - delta).abs() <= 0.01 * delta.abs())


def test_deeplift_rescale_sums_to_output_difference(gray_batch):
    net = _avgpool_net()
    x, y = gray_batch
    a = explain.get("deeplift")(net, x, y)
    delta = _target(net, x, y) - _target(net, torch.zeros_like(x), y)
    torch.testing.assert_close(a.sum(dim=(1, 2, 3)), delta, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["lrp_epsilon_plus_flat", "lrp_alpha2_beta1_flat", "lrp_epsilon_gamma_box"])
def test_lrp_conserves_relevance_without_biases(gray_batch, name):
    net = _avgpool_net(bias=False)
    x, y = gray_batch
    a = explain.get(name)(net, x, y)
    torch.testing.assert_close(a.sum(dim=(1, 2, 3)), _target(net, x, y), atol=1e-6, rtol=1e-3)


def test_lrp_conserves_relevance_through_maxpool_cnn(gray_batch):
    torch.manual_seed(3)
    net = build("small_cnn", width=8)
    for m in net.modules():
        if hasattr(m, "bias") and m.bias is not None:
            nn.init.zeros_(m.bias)
    x, y = gray_batch
    a = explain.get("lrp_epsilon_plus_flat")(net, x, y)
    torch.testing.assert_close(a.sum(dim=(1, 2, 3)), _target(net, x, y), atol=1e-6, rtol=1e-3)


def test_cam_equals_gradcam_up_to_positive_factor(small_cnn, gray_batch):
    x, y = gray_batch
    cam = explain.get("cam")(small_cnn, x, y)
    # the ReLU that feeds global average pooling is features.7 in small_cnn
    gc = explain.get("gradcam", layer="features.7", relu=False)(small_cnn, x, y)
    hw = 8 * 8  # spatial size of the feature maps for 32x32 input
    torch.testing.assert_close(cam, gc * hw, atol=1e-5, rtol=1e-4)
    gc_relu = explain.get("gradcam", layer="features.7")(small_cnn, x, y)
    torch.testing.assert_close(explain.get("cam", relu=True)(small_cnn, x, y), gc_relu * hw, atol=1e-5, rtol=1e-4)


def test_gradcam_plus_plus_weights_match_closed_form_for_linear_head(small_cnn, gray_batch):
    """For S = sum_k w_k mean_ij A_kij the gradient is constant g_k = w_k / hw per map, so
    alpha_k = 1 / (2 + hw * g_k... ) reduces to 1/(hw) * g^2/(2g^2 + sum A g^3) * hw; check against a direct formula."""
    x, y = gray_batch
    out = explain.get("gradcam_plus_plus", layer="features.7")(small_cnn, x, y)
    feats = {}
    h = small_cnn.features[7].register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    with torch.no_grad():
        small_cnn(x)
    h.remove()
    a = feats["a"]
    hw = a.shape[2] * a.shape[3]
    g = small_cnn.classifier.weight[y] / hw  # [N, K]
    g = g[:, :, None, None].expand_as(a)
    alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3)
    alpha = torch.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0)
    w = (alpha * g.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    cam = (w * a).sum(1, keepdim=True).clamp_min(0)
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, cam, atol=1e-6, rtol=1e-4)


CAPTUM_DIRECT = {
    "saliency": lambda m, x, y: ca.Saliency(m).attribute(x, target=y, abs=True),
    "input_x_gradient": lambda m, x, y: ca.InputXGradient(m).attribute(x, target=y),
    "integrated_gradients": lambda m, x, y: ca.IntegratedGradients(m).attribute(
        x, baselines=torch.zeros_like(x), target=y, n_steps=32, method="gausslegendre"
    ),
    "deeplift": lambda m, x, y: ca.DeepLift(m).attribute(x, baselines=torch.zeros_like(x), target=y),
    "guided_backprop": lambda m, x, y: ca.GuidedBackprop(m).attribute(x, target=y),
    "deconvnet": lambda m, x, y: ca.Deconvolution(m).attribute(x, target=y),
    "gradcam": lambda m, x, y: ca.LayerAttribution.interpolate(
        ca.LayerGradCam(m, m.features[6]).attribute(x, target=y, relu_attributions=True), x.shape[-2:], "bilinear"
    ),
    "occlusion": lambda m, x, y: ca.Occlusion(m).attribute(
        x, sliding_window_shapes=(1, 8, 8), strides=(1, 4, 4), baselines=torch.zeros_like(x), target=y
    ),
    "smoothgrad": None,
}


@pytest.mark.parametrize("name", [k for k in CAPTUM_DIRECT if CAPTUM_DIRECT[k] is not None])
def test_wrapper_matches_captum_called_directly(small_cnn, gray_batch, name):
    x, y = gray_batch
    ours = explain.get(name, batch_size=7)(small_cnn, x, y)
    xx = x.clone().requires_grad_(False)
    direct = CAPTUM_DIRECT[name](small_cnn, xx, y).detach()
    torch.testing.assert_close(ours, direct.expand_as(ours), atol=1e-6, rtol=1e-5)


def test_smoothgrad_matches_captum_noise_tunnel_with_same_seed(small_cnn, gray_batch):
    x, y = gray_batch
    ours = explain.get("smoothgrad", n_samples=8, sigma=0.2, seed=5, batch_size=1000)(small_cnn, x, y)
    torch.manual_seed(5)
    direct = ca.NoiseTunnel(ca.Saliency(small_cnn)).attribute(
        x, nt_type="smoothgrad", nt_samples=8, stdevs=0.2, target=y, abs=False, nt_samples_batch_size=8
    )
    torch.testing.assert_close(ours, direct, atol=1e-6, rtol=1e-5)


def test_lrp_matches_zennit_called_directly(gray_batch):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    torch.manual_seed(1)
    net = build("small_vgg", width=8).eval()
    x, y = gray_batch
    ours = explain.get("lrp_epsilon_plus_flat", batch_size=3)(net, x, y)
    with torch.no_grad():
        out = net(x)
    rel = torch.zeros_like(out).scatter_(1, y.view(-1, 1), 1.0) * out
    with Gradient(model=net, composite=EpsilonPlusFlat(epsilon=1e-6, canonizers=[SequentialMergeBatchNorm()])) as attr:
        _, direct = attr(x, rel)
    torch.testing.assert_close(ours, direct, atol=1e-6, rtol=1e-5)

"""HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM, Score-CAM, Ablation-CAM and FullGrad against
pytorch-grad-cam (the ``grad-cam`` package): the same maps after its ReLU and per-image
min-max scaling, within 1e-4; the pass counts of the CAMs that perturb every channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiscope import explain

gc = pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package (test oracle)")


class Net(torch.nn.Module):
    """The target layer keeps the input size, so no library resizes the maps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(dim=(2, 3)))


class PoolNet(torch.nn.Module):
    """Batch norm with non-trivial running statistics, module ReLUs (Ablation-CAM's oracle
    replaces the module it ablates) and a 2x2 pooling: ``c2`` and ``r2`` give 6x6 maps of a
    12x12 input, so the masks and maps are upsampled (OpenCV's bilinear resize in the oracle
    equals torch's half-pixel bilinear upsampling at this factor)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(6)
        self.r1 = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.c2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.r2 = torch.nn.ReLU()
        self.fc = torch.nn.Linear(8, 3)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            self.b1.running_mean.copy_(0.1 * torch.randn(6, generator=g))
            self.b1.running_var.copy_(0.5 + torch.rand(6, generator=g))
            self.b1.weight.copy_(0.5 + torch.rand(6, generator=g))
            self.b1.bias.copy_(0.1 * torch.randn(6, generator=g))

    def forward(self, x):
        return self.fc(self.r2(self.c2(self.pool(self.r1(self.b1(self.c1(x)))))).mean(dim=(2, 3)))


def minmax(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scaling, which it applies twice (per layer, then after averaging the
    layers): subtract the minimum, divide by (1e-7 + the maximum). The 1e-7 matters for maps
    of small magnitude, so the second pass is not a no-op. Any number of spatial dims."""
    dims = tuple(range(1, m.ndim))
    for _ in range(2):
        m = m - m.min(axis=dims, keepdims=True)
        m = m / (1e-7 + m.max(axis=dims, keepdims=True))
    return m


ORACLES = {"hirescam": "HiResCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}


@pytest.mark.parametrize("method", list(ORACLES))
def test_maps_equal_pytorch_grad_cam(method):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = Net().eval()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    with getattr(gc, ORACLES[method])(model=net, target_layers=[net.c2]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in y])
    if method != "eigencam":
        ours = explain.get(method, layer="c2")(net, x, y)[:, 0].numpy()
        np.testing.assert_allclose(minmax(ours), theirs, atol=1e-4)
        return
    # the SVD leaves the component's sign open: per image, one of the two signs is theirs
    p = explain.get(method, layer="c2", relu=False)(net, x, y)[:, 0].numpy()
    for i in range(len(p)):
        err = min(np.abs(minmax(np.maximum(s * p[i : i + 1], 0)) - theirs[i]).max() for s in (1, -1))
        assert err < 1e-4, (i, err)


def test_closed_forms_on_given_activations():
    from xaiscope.explain.cam_family import HiResCAMExplainer, LayerCAMExplainer, XGradCAMExplainer, first_component

    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    g = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]], [[2.0, 2.0], [-2.0, 1.0]]]])
    torch.testing.assert_close(HiResCAMExplainer.combine(a, g)[0, 0], torch.tensor([[1.0, 0.0], [1.5, 1.0]]))
    torch.testing.assert_close(LayerCAMExplainer.combine(a, g)[0, 0], torch.tensor([[1.0, 2.0], [1.5, 1.0]]))
    w0, w1 = (1 - 2 + 1.5 + 0) / (10 + 1e-7), (0 + 2 + 0 + 1) / (2 + 1e-7)
    torch.testing.assert_close(XGradCAMExplainer.combine(a, g)[0, 0], w0 * a[0, 0] + w1 * a[0, 1])
    # one channel: the first component is the centred channel itself (signed like it)
    one = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    torch.testing.assert_close(first_component(one)[0, 0], one[0, 0] - 3.0)


#: method -> (oracle class, layer); Ablation-CAM's oracle zeroes a channel only where the layer's
#: smallest activation is 0 (else it sets it 1e7 below), so it is compared on a ReLU's output
GRADIENT_FREE = {"scorecam": ("ScoreCAM", "c2"), "ablationcam": ("AblationCAM", "r2"), "fullgrad": ("FullGrad", None)}


@pytest.mark.parametrize("method", list(GRADIENT_FREE))
def test_scorecam_ablationcam_fullgrad_equal_pytorch_grad_cam(method):
    """At a layer of half the input's size, with 5 copies per model call (so the channels of
    consecutive images share calls): the oracle's maps within 1e-4 (measured: about 3e-7)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    oracle, layer = GRADIENT_FREE[method]
    net = PoolNet().eval()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    hp = {"batch_size": 5} | ({} if layer is None else {"layer": layer})
    ours = explain.get(method, **hp)(net, x, y)[:, 0].numpy()
    layers = [] if layer is None else [getattr(net, layer)]  # FullGrad takes every bias layer
    with getattr(gc, oracle)(model=net, target_layers=layers) as cam:
        if method == "scorecam":
            cam.batch_size = 5
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in y])
    assert np.abs(minmax(ours) - theirs).max() < 1e-4


@pytest.mark.parametrize("method,layer,k", [("scorecam", "auto", 8), ("ablationcam", "r2", 8), ("scorecam", "c1", 6)])
def test_channel_cams_count_one_plus_k_passes_in_calls_of_batch_size(method, layer, k):
    """1 + K passes per image, K read from the layer (a ReLU: from the convolution before it);
    no call larger than ``batch_size``; the formula where the count needs the model."""
    from xaiscope.cli import _passes_text
    from xaiscope.models import count_passes

    net = PoolNet().eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    ex = explain.get(method, layer=layer, batch_size=7)
    with count_passes(net) as count:
        ex(net, x, torch.tensor([0, 1, 2]))
    assert ex.passes((3, 12, 12), net) == 1 + k
    assert count.rows == (1 + k) * 3 and count.largest_call <= 7
    assert np.isnan(ex.passes((3, 12, 12))) and _passes_text(ex) == ex.passes_formula.strip()
    assert explain.get("fullgrad").passes(None) == 1


def test_ablationcam_weights_are_the_relative_drop_of_the_logit():
    """w_k = (y - y_k) / y with y_k the logit when channel k of the layer is zero, by hand."""
    net = PoolNet().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([2, 0])
    acts = {}
    h = net.r2.register_forward_hook(lambda m, a, out: acts.__setitem__("a", out))
    with torch.no_grad():
        base = net(x).gather(1, y[:, None])
    h.remove()
    drops = []
    for k in range(8):

        def zero(m, a, out, k=k):
            out = out.clone()
            out[:, k] = 0
            return out

        h = net.r2.register_forward_hook(zero)
        with torch.no_grad():
            drops.append((base - net(x).gather(1, y[:, None])) / base)
        h.remove()
    w = torch.cat(drops, dim=1)
    want = (w[:, :, None, None] * acts["a"]).sum(1, keepdim=True).clamp_min(0)
    want = torch.nn.functional.interpolate(want, size=(12, 12), mode="bilinear", align_corners=False)
    got = explain.get("ablationcam", layer="r2")(net, x, y)
    torch.testing.assert_close(got[:, :1], want, rtol=1e-5, atol=1e-6)


def test_scorecam_and_ablationcam_on_vit_tokens():
    """On a ViT's last norm1 (tokens [N, T, K]; 1 class + 2 register tokens, 4x4 patches):
    Score-CAM equals pytorch-grad-cam's with the same token layout (measured: about 3e-5, the
    float32 noise of differently batched forwards, enlarged by the min-max); Ablation-CAM zeroes
    the channel in the tokens' last dim, as by hand."""
    timm = pytest.importorskip("timm")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=24, depth=2,
        num_heads=3, num_classes=2, reg_tokens=2,
    ).eval()  # fmt: skip
    x, y = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 0])
    layer = vit.blocks[-1].norm1

    def grid(t):  # prefix tokens dropped, patches on the grid, channels first
        return t[:, 3:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    with gc.ScoreCAM(model=vit, target_layers=[layer], reshape_transform=grid) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in y])
    ours = explain.get("scorecam")(vit, x, y)[:, 0].numpy()
    assert np.abs(minmax(ours) - theirs).max() < 1e-4

    acts, drops = {}, []
    h = layer.register_forward_hook(lambda m, a, out: acts.__setitem__("a", out))
    with torch.no_grad():
        base = vit(x).gather(1, y[:, None])
        h.remove()
        for k in range(24):
            h = layer.register_forward_hook(lambda m, a, out, k=k: out.index_fill(2, torch.tensor([k]), 0.0))
            drops.append((base - vit(x).gather(1, y[:, None])) / base)
            h.remove()
    want = (torch.cat(drops, 1)[:, :, None, None] * grid(acts["a"])).sum(1, keepdim=True).clamp_min(0)
    want = torch.nn.functional.interpolate(want, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(explain.get("ablationcam")(vit, x, y)[:, :1], want, rtol=1e-4, atol=1e-5)

"""HiResCAM, XGrad-CAM, LayerCAM and Eigen-CAM against pytorch-grad-cam (the ``grad-cam``
package): the same maps after its ReLU and per-image min-max scaling, within 1e-4."""

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


def minmax(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scaling, which it applies twice (per layer, then after averaging the
    layers): subtract the minimum, divide by (1e-7 + the maximum). The 1e-7 matters for maps
    of small magnitude, so the second pass is not a no-op."""
    for _ in range(2):
        m = m - m.min(axis=(1, 2), keepdims=True)
        m = m / (1e-7 + m.max(axis=(1, 2), keepdims=True))
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

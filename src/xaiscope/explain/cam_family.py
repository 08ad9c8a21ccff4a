"""More class activation maps from one layer's activations ``A`` ``[N, K, h, w]`` and the
gradients ``g = dS_y/dA`` of the target score (tokens and channels-last maps laid out by
:func:`~xaiscope.explain.layers.to_channels_first`, so they work on ViTs and Swin too):

- ``hirescam`` (Draelos & Carin 2020, arXiv:2011.08891): ``M = sum_k g_k * A_k``, element-wise
  (Grad-CAM's spatial averaging of ``g`` left out, so the map is faithful to the score);
- ``xgradcam`` (Fu et al. 2020, arXiv:2008.02312): ``w_k = sum_ij g_kij A_kij / (sum_ab A_kab
  + 1e-7)``, ``M = sum_k w_k A_k``;
- ``layercam`` (Jiang et al. 2021, IEEE TIP 30:5875): ``M = sum_k ReLU(g_k) * A_k``;
- ``eigencam`` (Muhammad & Yeasin 2020, arXiv:2008.00299): the projection of each pixel's
  activation vector on the first principal direction of the image's (centred) activations,
  no gradient; the SVD leaves the sign open, which is fixed so that the map correlates
  positively with the channel-summed activation.

``relu`` (default True) clips the map at 0, as all four papers do. Maps are upsampled
bilinearly to the input. Passes: 1 per image (eigencam forward only).
"""

from __future__ import annotations

import torch

from xaiscope.explain.base import LAYER, Explainer, Param, register
from xaiscope.explain.cam import _capture, activations_and_gradients, upsample
from xaiscope.explain.chunking import per_chunk
from xaiscope.explain.layers import find_layer, to_channels_first
from xaiscope.models.forward import check_target_range

RELU = Param(True, bool, "clip negative values")


class _GradientCAM(Explainer):
    """Shared mechanism: activations and gradients at the layer, a map from them."""

    family, library = "cams", "xaiscope"
    params = {"layer": LAYER, "relu": RELU}

    @staticmethod
    def combine(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _attribute(self, model, x, y):
        _, layer = find_layer(model, self.hparams["layer"], self.name)

        def run(xb, yb):
            a, g = activations_and_gradients(model, layer, xb, yb, self.name)
            cam = self.combine(a, g)
            return upsample(cam.clamp_min(0) if self.hparams["relu"] else cam, xb.shape[-2:])

        return per_chunk(run, x, y, self.batch_size)


@register
class HiResCAMExplainer(_GradientCAM):
    """HiResCAM (Draelos & Carin 2020, arXiv:2011.08891): M = sum_k g_k * A_k. 1 pass."""

    name = "hirescam"

    @staticmethod
    def combine(a, g):
        return (g * a).sum(dim=1, keepdim=True)


@register
class XGradCAMExplainer(_GradientCAM):
    """XGrad-CAM (Fu et al. 2020, arXiv:2008.02312): activation-weighted gradient sums. 1 pass."""

    name = "xgradcam"

    @staticmethod
    def combine(a, g):
        w = (g * a / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3), keepdim=True)
        return (w * a).sum(dim=1, keepdim=True)


@register
class LayerCAMExplainer(_GradientCAM):
    """LayerCAM (Jiang et al. 2021, IEEE TIP 30:5875): M = sum_k ReLU(g_k) * A_k. 1 pass."""

    name = "layercam"

    @staticmethod
    def combine(a, g):
        return (g.clamp_min(0) * a).sum(dim=1, keepdim=True)


def first_component(a: torch.Tensor) -> torch.Tensor:
    """Per image, the projection ``[N, 1, h, w]`` of the centred activation vectors on their
    first principal direction, signed to correlate positively with ``sum_k A_k``."""
    n, k, h, w = a.shape
    r = a.double().reshape(n, k, h * w).transpose(1, 2)  # [N, hw, K]
    r = r - r.mean(dim=1, keepdim=True)
    _, _, vt = torch.linalg.svd(r, full_matrices=False)
    p = (r @ vt[:, 0, :].unsqueeze(-1)).squeeze(-1)  # [N, hw]
    ref = a.double().sum(1).reshape(n, h * w)
    ref = ref - ref.mean(1, keepdim=True)
    sign = torch.where((p * ref).sum(1, keepdim=True) < 0, -1.0, 1.0).to(p.dtype)
    return (p * sign).reshape(n, 1, h, w).float()


@register
class EigenCAMExplainer(Explainer):
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299): first principal component of the
    layer's activations; class-agnostic. 1 pass (forward only)."""

    name, family, library = "eigencam", "cams", "xaiscope"
    params = {"layer": LAYER, "relu": RELU}

    def _attribute(self, model, x, y):
        _, layer = find_layer(model, self.hparams["layer"], self.name)

        def run(xb, yb):
            with torch.no_grad():
                out, a = _capture(layer, lambda: model(xb))
            check_target_range(yb, out.shape[1])  # class-agnostic, but a target must still be a class
            cam = first_component(to_channels_first(a, model, self.name))
            return upsample(cam.clamp_min(0) if self.hparams["relu"] else cam, xb.shape[-2:])

        return per_chunk(run, x, y, self.batch_size)

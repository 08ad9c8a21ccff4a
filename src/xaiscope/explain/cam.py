"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and guided Grad-CAM.

Maps are computed at a layer's resolution and upsampled bilinearly to the input size,
then repeated over the input channels so every explainer returns ``[N, C, H, W]``.
Grad-CAM and Grad-CAM++ also explain volumes ``[N, C, D, H, W]`` (a ``Conv3d`` layer): the
channel weights average (sum) over the three spatial dimensions and the map is upsampled
trilinearly to ``(D, H, W)``. Pass counts per image: cam 1 (forward only), gradcam 1,
gradcam_plus_plus 1, guided_gradcam 2.
"""

from __future__ import annotations

import captum.attr as ca
import torch
import torch.nn.functional as F

from xaiscope.errors import MethodError
from xaiscope.explain.base import LAYER, Explainer, Param, register
from xaiscope.explain.chunking import per_chunk
from xaiscope.explain.layers import find_layer, gap_features_model, to_channels_first
from xaiscope.models.prepare import unique_activations


def upsample(cam: torch.Tensor, size: tuple[int, ...], align_corners: bool = False) -> torch.Tensor:
    """``[N, K, h, w]`` -> ``[N, K, H, W]`` (bilinear), or ``[N, K, d, h, w]`` -> ``[N, K, D, H, W]``
    (trilinear); half-pixel centres unless ``align_corners``."""
    size = tuple(size)
    if tuple(cam.shape[2:]) == size:
        return cam
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(cam, size=size, mode=mode, align_corners=align_corners)


def spatial_dims(a: torch.Tensor) -> tuple[int, ...]:
    """The spatial dimensions of ``[N, K, h, w]`` maps or ``[N, K, d, h, w]`` volumes."""
    return tuple(range(2, a.dim()))


def _capture(module, x_fn):
    """Run ``x_fn()`` and return (its result, the module's output tensor)."""
    store = {}

    def hook(_m, args, out):
        store["a"] = out

    handle = module.register_forward_hook(hook)
    try:
        result = x_fn()
    finally:
        handle.remove()
    if "a" not in store:
        raise MethodError("The chosen layer was not called in the model's forward pass.")
    return result, store["a"]


@register
class CAMExplainer(Explainer):
    """Class activation mapping, M_y = sum_k w_{y,k} A_k, with A the feature maps entering
    global average pooling and w the final linear layer (Zhou et al. 2016, arXiv:1512.04150)."""

    name, family, library = "cam", "cams", "xaiscope"
    params = {"relu": Param(False, bool, "clip negative values")}

    def _attribute(self, model, x, y):
        features, linear = gap_features_model(model, self.name)

        def run(xb, yb):
            with torch.no_grad():
                _, a = features(xb)
            if a.dim() != xb.dim() or a.shape[1] != linear.in_features:
                raise MethodError(
                    "cam needs the pooled feature maps to feed the final linear layer directly "
                    f"({a.shape[1] if a.dim() > 1 else '?'} maps vs {linear.in_features} inputs)."
                )
            w = linear.weight[yb]  # [N, K]
            cam = torch.einsum("nk,nk...->n...", w, a).unsqueeze(1)
            if self.hparams["relu"]:
                cam = cam.clamp_min(0)
            return upsample(cam, xb.shape[2:])

        return per_chunk(run, x, y, self.batch_size)


@register
class GradCAMExplainer(Explainer):
    """Grad-CAM: ReLU(sum_k alpha_k A_k), alpha_k = mean_ij dS_y/dA_k,ij
    (Selvaraju et al. 2017, arXiv:1610.02391), via Captum's LayerGradCam."""

    name, family, library = "gradcam", "cams", "captum"
    params = {"layer": LAYER, "relu": Param(True, bool, "clip negative values")}

    def _attribute(self, model, x, y):
        _, layer = find_layer(model, self.hparams["layer"], self.name)
        relu = self.hparams["relu"]
        if _channels_first(model):  # Captum's LayerGradCam on [N, K, h, w] maps (or volumes)
            gc = ca.LayerGradCam(model, layer)

            def run(xb, yb):
                return upsample(gc.attribute(xb, target=yb, relu_attributions=relu), xb.shape[2:])

        else:  # tokens or channels-last maps: the same formula after the layout step

            def run(xb, yb):
                a, g = activations_and_gradients(model, layer, xb, yb, self.name)
                cam = (g.mean(dim=spatial_dims(g), keepdim=True) * a).sum(dim=1, keepdim=True)
                return upsample(cam.clamp_min(0) if relu else cam, xb.shape[2:])

        return per_chunk(run, x, y, self.batch_size)


def _channels_first(model) -> bool:
    """Whether the model's layers give channels-first ``[N, K, h, w]`` maps: not a vision
    transformer (tokens) and not a channels-last model (``output_fmt`` ``NHWC``, Swin)."""
    if getattr(model, "output_fmt", None) == "NHWC":
        return False
    return not any(hasattr(m, "qkv") and hasattr(m, "num_heads") for m in model.modules())


def activations_and_gradients(model, layer, xb, yb, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, dS_y/dA)`` at ``layer``, both ``[N, K, h, w]`` (``[N, K, d, h, w]``) after the layout step
    (:func:`~xaiscope.explain.layers.to_channels_first`); one forward and one backward."""
    xb = xb.clone().requires_grad_(True)
    with torch.enable_grad():
        out, a = _capture(layer, lambda: model(xb))
        score = out.gather(1, yb.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(score, a)
    return to_channels_first(a.detach(), model, method), to_channels_first(g, model, method)


@register
class GradCAMPlusPlusExplainer(Explainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018, arXiv:1710.11063), with the exponential-score
    closed form: alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3), w_k = sum_ij alpha_kij ReLU(g_kij),
    M = ReLU(sum_k w_k A_k), where g = dS_y/dA."""

    name, family, library = "gradcam_plus_plus", "cams", "xaiscope"
    params = {"layer": LAYER}

    def _attribute(self, model, x, y):
        _, layer = find_layer(model, self.hparams["layer"], self.name)

        def run(xb, yb):
            a, g = activations_and_gradients(model, layer, xb, yb, self.name)
            g2, g3 = g.pow(2), g.pow(3)
            denom = 2 * g2 + a.sum(dim=spatial_dims(a), keepdim=True) * g3
            alpha = torch.where(
                denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g)
            )
            w = (alpha * g.clamp_min(0)).sum(dim=spatial_dims(a), keepdim=True)
            cam = (w * a).sum(dim=1, keepdim=True).clamp_min(0)
            return upsample(cam, xb.shape[2:])

        return per_chunk(run, x, y, self.batch_size)


@register
class GuidedGradCAMExplainer(Explainer):
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map
    (Selvaraju et al. 2017), via Captum's GuidedGradCam."""

    name, family, library = "guided_gradcam", "cams", "captum"
    params = {"layer": LAYER}

    def _passes(self, shape, model=None):
        return 2

    def _attribute(self, model, x, y):
        layer_name, _ = find_layer(model, self.hparams["layer"], self.name)
        prepared = unique_activations(model)
        try:
            layer = prepared.get_submodule(layer_name)
        except AttributeError:
            layer = model.get_submodule(layer_name)
        ggc = ca.GuidedGradCam(prepared, layer)
        return per_chunk(lambda xb, yb: ggc.attribute(xb, target=yb), x, y, self.batch_size)

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

Gradient-free CAMs that weigh each channel by the target score ``S_y`` (the logit) of ``K``
modified copies of the image, sent through the chunked forward helper
(:func:`xaiscope.models.forward`) ``batch_size`` copies at a time, channels of several images
sharing a call:

- ``scorecam`` (Wang et al. 2020, CVPR workshops, arXiv:1910.01279): ``H_k`` = ``A_k``
  upsampled to the input (aligned corners) and min-max scaled per image,
  ``(H_k - min) / (max - min + 1e-8)``;
  ``s_k = S_y(x * H_k)``; ``w = softmax_k(s)``; ``M = sum_k w_k A_k``;
- ``ablationcam`` (Desai & Ramaswamy 2020, WACV, doi:10.1109/WACV45572.2020.9093360):
  ``y_k`` = ``S_y`` with channel ``k`` of the layer's output set to zero (a forward hook);
  ``w_k = (y - y_k) / y``; ``M = sum_k w_k A_k``.

``relu`` (default True) clips the map at 0, as all six papers do. Maps are upsampled
bilinearly to the input (trilinearly for volumes). Every method here also explains volumes
``[N, C, D, H, W]`` through a ``Conv3d`` layer (sums and means over the three spatial
dimensions). Passes per image: 1 (eigencam forward only); scorecam and ablationcam
``1 + K`` forwards, ``K`` = channels of the layer.

``fullgrad`` (Srinivas & Fleuret 2019, NeurIPS, arXiv:1905.00780) is the full-gradient
decomposition: ``psi(|x * dS_y/dx|)`` plus, for every layer ``l`` with a bias ``b_l``,
``psi(|b_l * dS_y/dz_l|)`` (``z_l`` the layer's output), summed over channels and layers;
``psi`` scales each (image, channel) to [0, 1] and upsamples bilinearly. One forward and one
backward; 2D models only.
"""

from __future__ import annotations

import torch
from torch import nn

from xaiscope.errors import MethodError
from xaiscope.explain.base import LAYER, Explainer, Param, register
from xaiscope.explain.cam import _capture, activations_and_gradients, spatial_dims, upsample
from xaiscope.explain.chunking import per_chunk
from xaiscope.explain.layers import channel_dim, find_layer, layer_channels, to_channels_first
from xaiscope.models.forward import check_target_range, forward, iter_chunks

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
            return upsample(cam.clamp_min(0) if self.hparams["relu"] else cam, xb.shape[2:])

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
        dims = spatial_dims(a)
        w = (g * a / (a.sum(dim=dims, keepdim=True) + 1e-7)).sum(dim=dims, keepdim=True)
        return (w * a).sum(dim=1, keepdim=True)


@register
class LayerCAMExplainer(_GradientCAM):
    """LayerCAM (Jiang et al. 2021, IEEE TIP 30:5875): M = sum_k ReLU(g_k) * A_k. 1 pass."""

    name = "layercam"

    @staticmethod
    def combine(a, g):
        return (g.clamp_min(0) * a).sum(dim=1, keepdim=True)


def first_component(a: torch.Tensor) -> torch.Tensor:
    """Per image, the projection ``[N, 1, h, w]`` (``[N, 1, d, h, w]``) of the centred activation
    vectors on their first principal direction, signed to correlate positively with ``sum_k A_k``."""
    n, k = a.shape[:2]
    r = a.double().flatten(2).transpose(1, 2)  # [N, hw, K]
    r = r - r.mean(dim=1, keepdim=True)
    # the first singular pair from the smaller Gram matrix (an eigendecomposition of
    # min(hw, K)^2 entries instead of an SVD): p = r v_1 = sigma_1 u_1
    if r.shape[1] <= k:
        lam, u = torch.linalg.eigh(r @ r.transpose(1, 2))  # [N, hw, hw], ascending eigenvalues
        p = u[:, :, -1] * lam[:, -1:].clamp_min(0).sqrt()
    else:
        _, v = torch.linalg.eigh(r.transpose(1, 2) @ r)  # [N, K, K]
        p = (r @ v[:, :, -1:]).squeeze(-1)  # [N, hw]
    ref = a.double().sum(1).flatten(1)
    ref = ref - ref.mean(1, keepdim=True)
    sign = torch.where((p * ref).sum(1, keepdim=True) < 0, -1.0, 1.0).to(p.dtype)
    return (p * sign).reshape(n, 1, *a.shape[2:]).float()


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
            return upsample(cam.clamp_min(0) if self.hparams["relu"] else cam, xb.shape[2:])

        return per_chunk(run, x, y, self.batch_size)


def _copy_scores(model, xb: torch.Tensor, yb: torch.Tensor, k: int, batch_size: int, copies) -> torch.Tensor:
    """``[B, K]``: the target score ``S_y`` of every (image ``i``, channel ``k``) copy, where
    ``copies(i, k)`` gives the model inputs of a list of pairs (and sets whatever a hook reads);
    ``batch_size`` copies per call of the forward helper, images sharing calls."""
    n = xb.shape[0]
    scores = torch.empty(n * k, device=xb.device, dtype=torch.float32)
    for part in iter_chunks(n * k, batch_size):
        pair = torch.arange(part.start, part.stop, device=xb.device)
        img, ch = pair // k, pair % k
        out = forward(model, copies(img, ch), batch_size=batch_size)
        scores[part] = out.gather(1, yb[img].view(-1, 1)).squeeze(1).float()
    return scores.view(n, k)


class _ChannelScoreCAM(Explainer):
    """Shared mechanism of the CAMs that weigh each channel of the layer by the target scores
    of ``K`` modified copies of the image (1 forward + ``K`` forwards per image)."""

    family, library = "cams", "xaiscope"
    params = {"layer": LAYER, "relu": RELU}
    passes_formula = "1 + K (K = channels of the layer; forward only)"

    def _passes(self, shape, model=None):
        if model is None:
            return float("nan")
        try:
            return 1.0 + layer_channels(model, self.hparams["layer"], self.name)
        except MethodError:
            return float("nan")

    def weights(self, model, layer, xb, yb, out, raw, a) -> torch.Tensor:  # pragma: no cover - abstract
        """``[B, K]`` channel weights from the model's outputs ``out`` on ``xb``, the layer's output
        ``raw`` (its own layout) and the activations ``a`` (channels first)."""
        raise NotImplementedError

    def _attribute(self, model, x, y):
        _, layer = find_layer(model, self.hparams["layer"], self.name)

        def run(xb, yb):
            with torch.no_grad():
                out, raw = _capture(layer, lambda: model(xb))
            check_target_range(yb, out.shape[1])
            a = to_channels_first(raw, model, self.name).float()
            w = self.weights(model, layer, xb, yb, out, raw, a)
            cam = (w.view(*w.shape, *[1] * (a.dim() - 2)) * a).sum(dim=1, keepdim=True)
            return upsample(cam.clamp_min(0) if self.hparams["relu"] else cam, xb.shape[2:])

        return per_chunk(run, x, y, self.batch_size)


@register
class ScoreCAMExplainer(_ChannelScoreCAM):
    """Score-CAM (Wang et al. 2020, CVPR workshops, arXiv:1910.01279): each channel ``A_k``,
    upsampled to the input and min-max scaled per image to ``H_k``, masks the image; the
    logits ``s_k = S_y(x * H_k)`` give ``w = softmax_k(s)`` and ``M = ReLU(sum_k w_k A_k)``.

    Where the paper leaves details open this follows pytorch-grad-cam's ``ScoreCAM`` (the test
    oracle): the weights are the softmax over the channels of the target logits (the authors'
    code weighs by the class probability ``softmax_classes(f(x * H_k))_y`` instead, and the
    paper's "increase in confidence" subtracts a baseline's score; all are positive weights,
    only their relative sizes differ), and the masks are upsampled bilinearly (trilinearly for
    volumes) with aligned corners (the authors' code uses half-pixel centres; the map itself
    is upsampled with half-pixel centres like every CAM here). Passes: 1 + K per image
    (forward only).
    """

    name = "scorecam"

    def weights(self, model, layer, xb, yb, out, raw, a):
        k = a.shape[1]
        size = xb.shape[2:]

        def masked(img, ch):
            h = upsample(a[img, ch].unsqueeze(1), size, align_corners=True)  # [b, 1, *size]
            low = h.flatten(1).amin(1).view(-1, *[1] * (h.dim() - 1))
            high = h.flatten(1).amax(1).view(-1, *[1] * (h.dim() - 1))
            return xb[img] * ((h - low) / (high - low + 1e-8))

        return _copy_scores(model, xb, yb, k, self.batch_size, masked).softmax(dim=1)


@register
class AblationCAMExplainer(_ChannelScoreCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020, WACV, doi:10.1109/WACV45572.2020.9093360):
    ``w_k = (y - y_k) / y`` with ``y`` the target logit and ``y_k`` the logit with channel ``k``
    of the layer's output set to zero (a forward hook zeroes one channel per copy, copies of
    several channels and images sharing a call); ``M = ReLU(sum_k w_k A_k)``; where ``y = 0``
    the weights are 0.

    Every copy runs the whole model (the layers before the chosen one too): a partial forward
    from the layer's cached output would skip them but needs the model split at the layer,
    which an arbitrary ``forward`` does not allow. Passes: 1 + K per image (forward only).
    pytorch-grad-cam's ``AblationCAM`` zeroes the channel only when the layer's smallest
    activation is 0 and otherwise sets it 1e7 below that minimum; the paper zeroes it, as here.
    """

    name = "ablationcam"

    def weights(self, model, layer, xb, yb, out, raw, a):
        k = a.shape[1]
        dim = channel_dim(raw, model)
        state: dict[str, torch.Tensor] = {}

        def zero_channel(_m, _args, o):
            ch = state["ch"]
            if not isinstance(o, torch.Tensor) or o.shape[0] != ch.shape[0]:
                raise MethodError(f"{self.name}: the layer gave an output the ablation hook cannot zero.")
            o = o.clone()
            o.movedim(dim, 1)[torch.arange(o.shape[0], device=o.device), ch] = 0
            return o

        def copies(img, ch):
            state["ch"] = ch
            return xb[img]

        handle = layer.register_forward_hook(zero_channel)
        try:
            ablated = _copy_scores(model, xb, yb, k, self.batch_size, copies)
        finally:
            handle.remove()
        base = out.gather(1, yb.view(-1, 1)).float()  # [B, 1]
        safe = torch.where(base != 0, base, torch.ones_like(base))
        return torch.where(base != 0, (base - ablated) / safe, torch.zeros_like(ablated))


def _bias_layers(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """``(module, b)`` for FullGrad: every ``Conv2d`` with a bias (``b`` its bias) and every
    ``BatchNorm2d`` with running statistics (``b`` = ``beta - mu gamma / sqrt(sigma^2 + eps)``,
    its bias in eval mode, the implicit bias of FullGrad's section 3, also without affine
    parameters). Only the exact ``BatchNorm2d`` type: subclasses such as timm's ``BatchNormAct2d``
    apply an activation inside, so their output is not the affine map the bias belongs to."""
    found = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            found.append((m, m.bias.detach()))
        elif type(m) is nn.BatchNorm2d and m.running_mean is not None:
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.detach()
            shift = m.bias.detach() if m.bias is not None else torch.zeros_like(scale)
            found.append((m, shift - m.running_mean * scale))
    return found


def _scale_channels(v: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's per (image, channel) scaling: ``v - min``, then divided by ``1e-7 + max``."""
    dims = tuple(range(2, v.dim()))
    v = v - v.amin(dim=dims, keepdim=True)
    return v / (1e-7 + v.amax(dim=dims, keepdim=True))


@register
class FullGradExplainer(Explainer):
    """FullGrad (Srinivas & Fleuret 2019, NeurIPS, arXiv:1905.00780):
    ``S = sum_c psi(|x * dS_y/dx|)_c + sum_l sum_c psi(|b_l * dS_y/dz_l|)_c`` over the layers
    ``l`` with a bias ``b_l`` and output ``z_l`` (every ``Conv2d`` and ``BatchNorm2d``, see
    ``_bias_layers``); ``psi`` = ``|.|``, scaled to [0, 1] per (image, channel), upsampled
    bilinearly (half-pixel centres) to the input.

    The paper's ``psi`` ("rescale to [0, 1], upsample") leaves open what one rescaling spans;
    here, as in pytorch-grad-cam's ``FullGrad`` (the test oracle), each channel of each image
    on its own, then the upsampling (the authors' code rescales a layer's channels jointly and
    upsamples with aligned corners). The biases of linear and other normalisation layers give
    no spatial map and are left out, as in both. A ``BatchNorm2d`` without affine parameters
    still has the implicit bias ``-mu / sqrt(sigma^2 + eps)`` and is counted (pytorch-grad-cam
    skips it). 2D models only. Passes: 1 per image (one forward, one backward).
    """

    name, family, library = "fullgrad", "cams", "xaiscope"
    volumes = False
    params: dict[str, Param] = {}

    def _attribute(self, model, x, y):
        why = self.applies_to(model)  # a model with 3D convolutions: one sentence
        if why is not None:
            raise MethodError(why)
        layers = _bias_layers(model)
        bias = {id(m): b for m, b in layers}

        def run(xb, yb):
            outs: list[tuple[torch.Tensor, torch.Tensor]] = []

            def keep(m, _args, o):  # the output keeps its gradient; in-place ops after it get a copy
                outs.append((o, bias[id(m)]))
                return o.clone()

            handles = [m.register_forward_hook(keep) for m, _ in layers]
            xr = xb.clone().requires_grad_(True)
            try:
                with torch.enable_grad():
                    out = model(xr)
                    score = out.gather(1, yb.view(-1, 1)).sum()
                    grads = torch.autograd.grad(score, [xr, *(o for o, _ in outs)], allow_unused=True)
            finally:
                for h in handles:
                    h.remove()
            size = xb.shape[2:]
            total = _scale_channels((grads[0] * xb).abs()).sum(dim=1, keepdim=True)
            for (_, b), g in zip(outs, grads[1:]):
                if g is None or g.dim() != 4:  # not on the path to the output
                    continue
                part = _scale_channels((g * b.to(g).view(1, -1, 1, 1)).abs()).sum(dim=1, keepdim=True)
                total = total + upsample(part, size)
            return total

        return per_chunk(run, x, y, self.batch_size)

"""Gradient and path methods, computed by Captum.

Pass counts (per image; one pass = one forward with its backward):
saliency, input_x_gradient, guided_backprop, deconvnet: 1; integrated_gradients:
``n_steps``; smoothgrad, vargrad: ``n_samples``; deeplift: 2 (input and reference in
one batch); deeplift_shap: ``2 * n_baselines``; gradient_shap: ``n_samples``.
"""

from __future__ import annotations

import captum.attr as ca
import torch

from xaiscope.explain.base import Explainer, Param, register
from xaiscope.explain.chunking import per_chunk, split_samples
from xaiscope.explain.references import REFERENCES, reference
from xaiscope.models.prepare import unique_activations

REF = Param("zero", str, "reference input", choices=REFERENCES)


@register
class SaliencyExplainer(Explainer):
    """Gradient of the target score w.r.t. the input (Simonyan et al. 2014, arXiv:1312.6034)."""

    name, family, library = "saliency", "gradient", "captum"
    params = {"abs": Param(True, bool, "absolute value of the gradient")}

    def _attribute(self, model, x, y):
        sal = ca.Saliency(model)
        return per_chunk(lambda xb, yb: sal.attribute(xb, target=yb, abs=self.hparams["abs"]), x, y, self.batch_size)


@register
class InputXGradientExplainer(Explainer):
    """Input times gradient (Shrikumar et al. 2016, arXiv:1605.01713)."""

    name, family, library = "input_x_gradient", "gradient", "captum"
    params = {}

    def _attribute(self, model, x, y):
        ixg = ca.InputXGradient(model)
        return per_chunk(lambda xb, yb: ixg.attribute(xb, target=yb), x, y, self.batch_size)


@register
class IntegratedGradientsExplainer(Explainer):
    """Integrated gradients: (x - x') * integral_0^1 grad f(x' + t (x - x')) dt
    (Sundararajan et al. 2017, arXiv:1703.01365). Completeness: sum a = f(x) - f(x')."""

    name, family, library = "integrated_gradients", "path", "captum"
    params = {
        "n_steps": Param(32, int, "integration steps", low=1),
        "method": Param(
            "gausslegendre",
            str,
            "quadrature",
            choices=("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"),
        ),
        "baseline": REF,
    }

    def _passes(self, shape, model=None):
        return self.hparams["n_steps"]

    def _attribute(self, model, x, y):
        ig = ca.IntegratedGradients(model)
        h = self.hparams

        def run(xb, yb):
            return ig.attribute(
                xb,
                baselines=reference(xb, h["baseline"]),
                target=yb,
                n_steps=h["n_steps"],
                method=h["method"],
                internal_batch_size=self.batch_size,
            )

        return per_chunk(run, x, y, max(1, self.batch_size // h["n_steps"]))


class _NoiseTunnelExplainer(Explainer):
    """Shared mechanism of smoothgrad and vargrad: Captum's NoiseTunnel over saliency."""

    family, library = "gradient", "captum"
    stochastic = True
    nt_type = "smoothgrad"
    params = {
        "n_samples": Param(16, int, "noisy samples per image", low=1),
        "sigma": Param(0.15, float, "noise standard deviation (input units)", low=0.0),
    }

    def _passes(self, shape, model=None):
        return self.hparams["n_samples"]

    def _attribute(self, model, x, y):
        h = self.hparams
        nt = ca.NoiseTunnel(ca.Saliency(model))
        images = max(1, self.batch_size // h["n_samples"])
        nt_batch = max(1, min(h["n_samples"], self.batch_size // images))

        def run(xb, yb):
            return nt.attribute(
                xb,
                nt_type=self.nt_type,
                nt_samples=h["n_samples"],
                stdevs=h["sigma"],
                nt_samples_batch_size=nt_batch,
                target=yb,
                abs=False,
            )

        return per_chunk(run, x, y, images)


@register
class SmoothGradExplainer(_NoiseTunnelExplainer):
    """Mean gradient over Gaussian-noised copies (Smilkov et al. 2017, arXiv:1706.03825)."""

    name, nt_type = "smoothgrad", "smoothgrad"


@register
class VarGradExplainer(_NoiseTunnelExplainer):
    """Variance of the gradient over Gaussian-noised copies (Adebayo et al. 2018, arXiv:1810.03307)."""

    name, nt_type = "vargrad", "vargrad"


@register
class DeepLiftExplainer(Explainer):
    """DeepLIFT rescale rule (Shrikumar et al. 2017, arXiv:1704.02685); sum a = f(x) - f(x')."""

    name, family, library = "deeplift", "path", "captum"
    params = {"baseline": REF}

    def _passes(self, shape, model=None):
        return 2

    def _attribute(self, model, x, y):
        dl = ca.DeepLift(unique_activations(model))
        return per_chunk(
            lambda xb, yb: dl.attribute(xb, baselines=reference(xb, self.hparams["baseline"]), target=yb),
            x,
            y,
            max(1, self.batch_size // 2),
        )


def _noisy_references(x: torch.Tensor, n: int, sigma: float) -> torch.Tensor:
    """``n`` reference images: zeros plus Gaussian noise of SD ``sigma``."""
    return sigma * torch.randn((n, *x.shape[1:]), device=x.device, dtype=x.dtype)


@register
class DeepLiftShapExplainer(Explainer):
    """DeepLIFT averaged over a reference distribution (Lundberg & Lee 2017, arXiv:1705.07874).

    The distribution is ``n_baselines`` zero images plus Gaussian noise of SD ``sigma``
    (the same draws for every image)."""

    name, family, library = "deeplift_shap", "path", "captum"
    stochastic = True
    params = {
        "n_baselines": Param(8, int, "reference samples", low=1),
        "sigma": Param(0.1, float, "noise SD of the references", low=0.0),
    }

    def _passes(self, shape, model=None):
        return 2 * self.hparams["n_baselines"]

    def _attribute(self, model, x, y):
        h = self.hparams
        dls = ca.DeepLiftShap(unique_activations(model))
        refs = _noisy_references(x, h["n_baselines"], h["sigma"])
        return per_chunk(
            lambda xb, yb: dls.attribute(xb, baselines=refs, target=yb),
            x,
            y,
            max(1, self.batch_size // (2 * h["n_baselines"])),
        )


@register
class GradientShapExplainer(Explainer):
    """Expected gradients on random points between input and noisy references
    (Lundberg & Lee 2017, arXiv:1705.07874)."""

    name, family, library = "gradient_shap", "path", "captum"
    stochastic = True
    params = {
        "n_samples": Param(16, int, "random path points per image", low=1),
        "n_baselines": Param(8, int, "reference samples", low=1),
        "sigma": Param(0.1, float, "noise SD of the references", low=0.0),
        "stdevs": Param(0.0, float, "noise SD added to each sampled input", low=0.0),
    }

    def _passes(self, shape, model=None):
        return self.hparams["n_samples"]

    def _attribute(self, model, x, y):
        h = self.hparams
        gs = ca.GradientShap(model)
        refs = _noisy_references(x, h["n_baselines"], h["sigma"])
        calls = split_samples(h["n_samples"], self.batch_size)

        def run(xb, yb):
            total = sum(k * gs.attribute(xb, baselines=refs, n_samples=k, stdevs=h["stdevs"], target=yb) for k in calls)
            return total / h["n_samples"]

        return per_chunk(run, x, y, max(1, self.batch_size // min(h["n_samples"], self.batch_size)))


@register
class GuidedBackpropExplainer(Explainer):
    """Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806)."""

    name, family, library = "guided_backprop", "gradient", "captum"
    params = {}

    def _attribute(self, model, x, y):
        gb = ca.GuidedBackprop(unique_activations(model))
        return per_chunk(lambda xb, yb: gb.attribute(xb, target=yb), x, y, self.batch_size)


@register
class DeconvNetExplainer(Explainer):
    """Deconvolution network (Zeiler & Fergus 2014, arXiv:1311.2901)."""

    name, family, library = "deconvnet", "gradient", "captum"
    params = {}

    def _attribute(self, model, x, y):
        dc = ca.Deconvolution(unique_activations(model))
        return per_chunk(lambda xb, yb: dc.attribute(xb, target=yb), x, y, self.batch_size)

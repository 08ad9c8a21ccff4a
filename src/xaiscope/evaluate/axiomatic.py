"""Axiomatic metrics: completeness, non-sensitivity, input invariance."""

from __future__ import annotations

import copy

import torch

from xaiscope import models
from xaiscope.errors import MetricError
from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate.base import ABS, ABS_T, NORM_F, OUTPUT_L, Metric, Param, pooled, register
from xaiscope.evaluate.cost import E


@register
class Completeness(P.PerturbationMetric):
    """Completeness gap ``|sum(a) - (f_y(x) - f_y(x'))|`` with ``x'`` the fill (default: the
    image minimum, Quantus' "black"), ``f`` the logit.

    Sundararajan et al. 2017, "Axiomatic attribution for deep networks", ICML. Quantus 0.6
    returns ``sum(a) == f(x) - f(x')`` (exact float equality, on max-normalised maps), which
    is False for almost every method; ``output="equal"`` with ``normalise=True`` reproduces
    it. Our default reports the gap, unnormalised. Lower is better; passes = 2.
    """

    name, category, direction = "completeness", "axiomatic", "lower"
    reference = "Sundararajan et al. 2017, ICML, arXiv:1703.01365"
    params = {
        "output": Param("gap", str, "gap or Quantus' exact equality", choices=("gap", "equal")),
        "fill": P.fill_param("black", choices=P.FILLS[:4]),
        "score": OUTPUT_L,
        "abs": ABS,
        "normalise": NORM_F,
    }
    spec = P.Perturbation(P.Pixels(), None, P.Single(), output="score", base=True)

    def summarise(self, c):
        s = c.m.flatten(1).double().sum(1)
        d = c.drop()[:, 0]
        if self.hparams["output"] == "equal":
            return (s.float() == d.float()).double()
        return (s - d).abs()


@register
class NonSensitivity(P.PerturbationMetric):
    """Non-sensitivity: the number of pixels where "has (near-)zero attribution" (``a < eps``)
    and "changing it alone moves ``f_y`` by less than ``eps``" disagree; each window of
    ``features_in_step`` pixels in raster order is set to the fill separately.

    Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584. Lower is better;
    passes = 1 + ceil(H W / features_in_step) (D H W voxels for volumes).
    """

    name, category, direction = "non_sensitivity", "axiomatic", "lower"
    reference = "Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584"
    params = P.settings(
        {"eps": Param(1e-5, float, "threshold", low=0.0), "features_in_step": P.FEATURES_IN_STEP},
        absolute=ABS_T,
    )
    spec = P.Perturbation(P.Pixels(), "raster", P.Windows("features_in_step"), base=True)

    def summarise(self, c):
        m, eps = c.m.flatten(1), self.hparams["eps"]
        no_effect = (c.drop().abs() < eps).repeat_interleave(self.hparams["features_in_step"], dim=1)
        return (no_effect[:, : m.shape[1]] ^ (m < eps)).sum(1).double()


def shifted_model(model: torch.nn.Module, shift: float, shape) -> torch.nn.Module:
    """Copy of ``model`` whose first Conv2d (Conv3d for volumes: ``shape`` = ``(C, D, H, W)``)
    absorbs an input shift: bias_c becomes ``2 b_c - min(conv(shift)_c)`` as in Quantus (exact
    away from zero-padded borders)."""
    new = copy.deepcopy(model)
    conv = torch.nn.Conv3d if len(shape) == 4 else torch.nn.Conv2d
    first = next((m for m in new.modules() if isinstance(m, conv)), None)
    if first is None or first.bias is None:
        raise MetricError(f"input_invariance needs a model whose first layer is a {conv.__name__} with a bias.")
    with torch.no_grad():
        dev = first.weight.device
        fw = first(torch.full((1, *shape), float(shift), device=dev))[0]
        first.bias.copy_(2 * first.bias - fw.flatten(1).amin(1))
    return new


@register
class InputInvariance(Metric):
    """Input invariance: shift the input by ``input_shift`` and compensate in the first layer's
    bias so the model's outputs are unchanged; 1 if the explanation of the shifted input by
    the shifted model equals the original map (``atol`` 1e-4), else 0.

    Kindermans et al. 2019, "The (un)reliability of saliency methods", arXiv:1711.00867.
    On volumes the first layer is a Conv3d. Higher is better; passes = E.
    """

    name, category, direction = "input_invariance", "axiomatic", "higher"
    needs = frozenset({"model", "explainer"})
    reference = "Kindermans et al. 2019, arXiv:1711.00867"
    params = {
        "input_shift": Param(-1.0, float, "constant added to every pixel"),
        "atol": Param(1e-4, float, "tolerance", low=0.0),
        "abs": ABS,
        "normalise": NORM_F,
    }
    cost = E

    def _score(self, model, x, y, a, mask, explainer):
        shift = self.hparams["input_shift"]
        net = shifted_model(model, shift, x.shape[1:])
        dims = x.dim() - 2
        with models.eval_mode(net):
            a2 = self.map(pooled(explainer(net, x + shift, y), dims), dims=dims)
        a1 = self.map(a, dims=dims)
        return torch.isclose(a1, a2, atol=self.hparams["atol"]).flatten(1).all(1).double()

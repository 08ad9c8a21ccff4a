"""Complexity metrics: how concentrated a map is. None calls the model (0 passes). Maps of
images ``[N, H, W]`` and volumes ``[N, D, H, W]`` alike are flat vectors of pixels (voxels)."""

from __future__ import annotations

import torch

from xaiscope.evaluate import stats
from xaiscope.evaluate.base import ABS_T, NORM, Metric, Param, register


class _Complexity(Metric):
    category = "complexity"
    params = {"abs": ABS_T, "normalise": NORM}


@register
class Sparseness(_Complexity):
    """Gini index of the (absolute) map: with ``v`` sorted ascending (plus 1e-7),
    ``sum_i (2i - n - 1) v_i / (n sum v)``. A constant map gives 0, a single peak ~1;
    an all-zero map gives NaN (no relevance to be sparse or spread, as for complexity).

    Chalasani et al. 2020, "Concise explanations of neural networks using adversarial
    training", ICML. Higher is better; 0 passes.
    """

    name, direction = "sparseness", "higher"
    reference = "Chalasani et al. 2020, ICML, arXiv:1810.06583"

    def _score(self, model, x, y, a, mask, explainer):
        m = self.map(a, dims=x.dim() - 2).flatten(1).double()
        v = stats.sort_rows(m + 1e-7)
        n = v.shape[-1]
        i = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
        gini = ((2 * i - n - 1) * v).sum(-1) / (n * v.sum(-1))
        return torch.where(m.abs().amax(-1) == 0, torch.full_like(gini, float("nan")), gini)


@register
class Complexity(_Complexity):
    """Entropy of the map's share distribution: ``p = |a| / sum|a|``,
    ``-sum p log(p + 1e-12)``. NaN for an all-zero map.

    Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations", IJCAI.
    Lower is better; 0 passes.
    """

    name, direction = "complexity", "lower"
    reference = "Bhatt et al. 2020, IJCAI, arXiv:2005.00631"

    def _score(self, model, x, y, a, mask, explainer):
        v = self.map(a, dims=x.dim() - 2).flatten(1).double()
        p = v / v.abs().sum(-1, keepdim=True)
        return -(p * torch.log(p + 1e-12)).sum(-1)


@register
class EffectiveComplexity(_Complexity):
    """Number of pixels whose (absolute, normalised) attribution exceeds ``eps``.

    Nguyen & Rodriguez Martinez 2020, "On quantitative aspects of model interpretability",
    arXiv:2007.07584. Lower is better; 0 passes.
    """

    name, direction = "effective_complexity", "lower"
    reference = "Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584"
    params = {"abs": ABS_T, "normalise": NORM, "eps": Param(1e-5, float, "threshold", low=0.0)}

    def _score(self, model, x, y, a, mask, explainer):
        return (self.map(a, dims=x.dim() - 2).flatten(1) > self.hparams["eps"]).sum(-1).double()

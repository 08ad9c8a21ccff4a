"""Explain: attribution methods behind one registry, and post-processing.

>>> from xaiscope import explain
>>> ig = explain.get("integrated_gradients", n_steps=64)
>>> a = ig(model, x, y)          # raw attributions [N, C, H, W]
>>> m = explain.postprocess(a, pool="sum", normalise="max")   # maps [N, H, W]
>>> explain.expand(["saliency", "lrp"])   # names; "all" and families (explain.groups()) expand
"""

from xaiscope.explain import gradient, cam, cam_family, lrp, perturbation, baselines, attention, lrp_attention  # noqa: F401,I001  (registration order)
from xaiscope.explain.base import Explainer, Param, applicable, expand, get, get_class, groups, names
from xaiscope.explain.perturbation import voxel_spacing
from xaiscope.explain.postprocess import NORMALISATIONS, POOLS, normalise, pool, postprocess

__all__ = [
    "Explainer",
    "NORMALISATIONS",
    "POOLS",
    "Param",
    "applicable",
    "expand",
    "get",
    "get_class",
    "groups",
    "names",
    "normalise",
    "pool",
    "postprocess",
    "voxel_spacing",
]

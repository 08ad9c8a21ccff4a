"""Evaluate: metrics behind one registry, batched in torch, one score per image.

>>> from xaiscope import evaluate
>>> m = evaluate.get("deletion", steps=20)
>>> scores = m(model, x, y, a)                  # [N], NaN where undefined
>>> fractions, curves = m.curves(model, x, y, a)   # [T+1], [N, T+1]
>>> m.passes((1, 64, 64))                      # model passes per image
>>> m.passes((1, 32, 64, 64))                  # ... per volume [C, D, H, W]

Every metric takes images ``x`` ``[N, C, H, W]`` or volumes ``[N, C, D, H, W]`` with
attributions of the shape of ``x`` or maps ``[N, *spatial]`` (``emd_score`` alone refuses
volumes, in one sentence).

Metadata per metric class: ``name``, ``category``, ``direction``, ``needs``,
``passes_formula``, ``reference``; ``evaluate.table()`` lists them. ``all`` and the
categories (``evaluate.groups()``) name groups: ``evaluate.select(["all"], masks=False)``.
"""

from xaiscope.evaluate import localisation, faithfulness, robustness, randomisation, complexity, axiomatic  # noqa: F401,I001
from xaiscope.evaluate.base import (
    CATEGORIES,
    Metric,
    by_group,
    expand,
    get,
    get_class,
    groups,
    has_masks_for,
    mask_for,
    names,
)


def table() -> list[dict]:
    """One dict per metric: name, category, direction, needs, passes formula, reference."""
    return [
        {
            "name": n,
            "category": c.category,
            "direction": c.direction,
            "needs": ", ".join(sorted(c.needs)) or "-",
            "passes": c.passes_formula,
            "reference": c.reference,
        }
        for n in names()
        for c in [get_class(n)]
    ]


def select(items: list[str], *, masks: bool, extra_masks=None) -> tuple[list[str], list[str]]:
    """``(metrics, left out)``: the names ``items`` give (names, categories, ``all``). Without
    masks (or without the extra mask a metric reads, when the names ``extra_masks`` are
    given), the metrics that need them are left out where only ``all`` or a category named
    them; a metric named on its own stays (and its job reports the missing masks)."""
    names_ = expand(items)
    implicit = by_group(items)
    extra = None if extra_masks is None else set(extra_masks)
    out = [n for n in names_ if n not in implicit or has_masks_for(get_class(n), masks, extra)]
    return out, [n for n in names_ if n not in out]


__all__ = [
    "CATEGORIES",
    "Metric",
    "expand",
    "get",
    "get_class",
    "groups",
    "has_masks_for",
    "mask_for",
    "names",
    "select",
    "table",
]

"""Evaluate: metrics behind one registry, batched in torch, one score per image.

>>> from xaiscope import evaluate
>>> m = evaluate.get("deletion", steps=20)
>>> scores = m(model, x, y, a)                  # [N], NaN where undefined
>>> fractions, curves = m.curves(model, x, y, a)   # [T+1], [N, T+1]
>>> m.passes((1, 64, 64))                      # model passes per image

Metadata per metric class: ``name``, ``category``, ``direction``, ``needs``,
``passes_formula``, ``reference``; ``evaluate.table()`` lists them.
"""

from xaiscope.evaluate import localisation, faithfulness, robustness, randomisation, complexity, axiomatic  # noqa: F401,I001
from xaiscope.evaluate.base import CATEGORIES, Metric, get, get_class, names


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


__all__ = ["CATEGORIES", "Metric", "get", "get_class", "names", "table"]

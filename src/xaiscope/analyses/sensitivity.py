"""Hyperparameter sensitivity: how much maps and scores move across a method's grid.

For each non-default setting s of a method and each image, its map is compared with the
default setting's map (absolute, channel-summed): Spearman rank correlation, SSIM
(``evaluate.stats.ssim``, maps max-normalised to [0, 1]) and top-k overlap
|top_k(a_s) ∩ top_k(a_default)| / k with k = ``top_k`` x H x W. Score movement is each
metric's mean per setting minus its mean at the default setting.
"""

from __future__ import annotations

import pandas as pd
import torch

from xaiscope.evaluate import stats
from xaiscope.explain.postprocess import postprocess


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of the top ``fraction`` pixels of ``a`` that are also in the top of ``b`` ``[N]``."""
    a, b = a.flatten(1), b.flatten(1)
    k = max(1, int(round(fraction * a.shape[1])))
    ia = a.topk(k, dim=1).indices
    ib = b.topk(k, dim=1).indices
    hit = torch.zeros_like(a, dtype=torch.bool).scatter_(1, ia, True) & torch.zeros_like(b, dtype=torch.bool).scatter_(
        1, ib, True
    )
    return hit.sum(1).double() / k


def map_similarity(ref: torch.Tensor, other: torch.Tensor, *, top_k: float = 0.1) -> dict[str, torch.Tensor]:
    """Spearman, SSIM and top-k overlap of two stacks of raw attributions ``[N, C, H, W]``."""
    m0 = postprocess(ref, pool="sum", normalise="max")
    m1 = postprocess(other, pool="sum", normalise="max")
    return {
        "spearman": stats.spearman(m0.flatten(1), m1.flatten(1)),
        "ssim": stats.ssim(m0, m1),
        "top_k_overlap": top_k_overlap(m0, m1, top_k),
    }


def map_sensitivity(maps: dict[str, torch.Tensor], default: str, ids: list[str], *, top_k: float = 0.1) -> pd.DataFrame:
    """Rows (setting, image_id, spearman, ssim, top_k_overlap) for every setting against ``default``."""
    rows = []
    for setting, a in maps.items():
        if setting == default:
            continue
        sims = map_similarity(maps[default], a, top_k=top_k)
        for i, id_ in enumerate(ids):
            rows.append({"setting": setting, "image_id": id_, **{k: float(v[i]) for k, v in sims.items()}})
    return pd.DataFrame(rows, columns=["setting", "image_id", "spearman", "ssim", "top_k_overlap"])


def score_sensitivity(results: pd.DataFrame, default: str) -> pd.DataFrame:
    """Mean score per (setting, metric) and its change from the default setting."""
    means = results.groupby(["setting", "metric"])["value"].mean().rename("mean").reset_index()
    base = means[means["setting"] == default].set_index("metric")["mean"]
    means["change_from_default"] = means["mean"] - means["metric"].map(base)
    return means

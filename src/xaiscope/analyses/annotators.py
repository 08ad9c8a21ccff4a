"""Several annotators: how much they agree, their consensus, and where explanations stand among them.

Masks are bool ``[N, A, H, W]`` (image, annotator, pixel). Every function is a pure function
of tensors; :mod:`xaiscope.commands.annotators_job` reads data and writes the tables.

- :func:`pairwise_agreement`: Dice and IoU of every pair of annotators on every image
  (NaN when both masks are empty: nothing to agree on).
- :func:`fleiss_kappa`: Fleiss' kappa of a subjects x categories count table (Fleiss 1971,
  Psychological Bulletin 76(5):378-382); :func:`pixel_kappa` treats every pixel as a subject
  rated foreground or background by every annotator.
- :func:`staple`: the STAPLE consensus and each annotator's sensitivity and specificity
  (Warfield, Zou and Wells 2004, IEEE TMI 23(7):903-921), with SimpleITK's
  ``STAPLEImageFilter`` when it is installed, else the binary EM written here.
- :func:`methods_vs_annotators`: a localisation metric's mean for each method against each
  annotator and the consensus, set against the same metric for the annotators' own masks
  scored against each other; the verdict says whether the method lies inside, below or
  above the experts' range.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from xaiscope.data.dataset import majority_vote
from xaiscope.errors import DataError

__all__ = [
    "ANNOTATORS",
    "StapleResult",
    "dice_iou",
    "fleiss_kappa",
    "majority_vote",
    "methods_vs_annotators",
    "pairwise_agreement",
    "pixel_kappa",
    "staple",
    "top_fraction",
    "verdict",
]


def _check(masks: torch.Tensor) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 4:
        raise DataError(f"Annotator masks must be [N, A, H, W]; got {list(getattr(masks, 'shape', []))}.")
    if masks.shape[1] < 2:
        raise DataError(f"Comparing annotators needs at least 2 of them; the masks hold {masks.shape[1]}.")
    return masks.bool()


def dice_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image Dice ``2|a&b| / (|a|+|b|)`` and IoU ``|a&b| / |a|b|`` of bool masks ``[N, H, W]``
    (float64 ``[N]``; NaN where both are empty)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter = (a & b).sum(1).double()
    total = a.sum(1).double() + b.sum(1).double()
    union = (a | b).sum(1).double()
    nan = torch.full_like(inter, math.nan)
    return torch.where(total > 0, 2 * inter / total, nan), torch.where(union > 0, inter / union, nan)


def pairwise_agreement(masks: torch.Tensor, annotators: list[str], ids: list[str]):
    """DataFrame with one row per image and pair of annotators: ``image_id, annotator_a,
    annotator_b, dice, iou``."""
    import pandas as pd

    masks = _check(masks)
    rows = []
    for i, j in itertools.combinations(range(masks.shape[1]), 2):
        d, u = dice_iou(masks[:, i], masks[:, j])
        rows += [(ids[k], annotators[i], annotators[j], float(d[k]), float(u[k])) for k in range(len(ids))]
    return pd.DataFrame(rows, columns=["image_id", "annotator_a", "annotator_b", "dice", "iou"])


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa of ``counts`` ``[subjects, categories]`` (raters per subject and category,
    the same number of raters for every subject). NaN when agreement by chance is total."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 1:
        raise DataError(f"Fleiss' kappa needs a subjects x categories table; got shape {list(c.shape)}.")
    raters = c.sum(1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise DataError("Fleiss' kappa needs the same number (at least 2) of raters for every subject.")
    n = raters[0]
    p_j = c.sum(0) / c.sum()
    p_i = (np.square(c).sum(1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), np.square(p_j).sum()
    return float((p_bar - p_e) / (1 - p_e)) if p_e < 1 else math.nan


def pixel_kappa(masks: torch.Tensor) -> float:
    """Fleiss' kappa over every pixel of every image, rated foreground or background by each annotator."""
    masks = _check(masks)
    fg = masks.sum(1).flatten().double().numpy()
    return fleiss_kappa(np.stack([masks.shape[1] - fg, fg], axis=1))


@dataclass
class StapleResult:
    """STAPLE's consensus: ``probability`` ``[N, H, W]`` that a pixel is foreground,
    ``consensus`` (probability >= 0.5), per annotator ``sensitivity`` and ``specificity``,
    the ``backend`` that computed it (``simpleitk`` or ``em``) and its ``iterations``."""

    probability: torch.Tensor
    consensus: torch.Tensor
    sensitivity: np.ndarray
    specificity: np.ndarray
    backend: str
    iterations: int

    def table(self, annotators: list[str]):
        """DataFrame ``annotator, sensitivity, specificity, weight`` (weight = sensitivity + specificity)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "annotator": list(annotators),
                "sensitivity": self.sensitivity,
                "specificity": self.specificity,
                "weight": self.sensitivity + self.specificity,
                "backend": self.backend,
            }
        )


def _has_simpleitk() -> bool:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return True


def staple(
    masks: torch.Tensor, *, backend: str = "auto", max_iterations: int = 200, tolerance: float = 1e-7
) -> StapleResult:
    """STAPLE over all pixels of all images at once (one sensitivity and specificity per annotator).

    ``backend``: ``auto`` (SimpleITK when installed, else ``em``), ``simpleitk`` or ``em``.
    The EM starts every annotator at sensitivity = specificity = 0.99 and the foreground
    prior at the annotators' mean foreground share (as ITK does), and stops when no
    sensitivity or specificity moves by more than ``tolerance``.
    """
    masks = _check(masks)
    if backend not in ("auto", "simpleitk", "em"):
        raise DataError(f"The STAPLE backend must be 'auto', 'simpleitk' or 'em', got {backend!r}.")
    if backend == "simpleitk" or (backend == "auto" and _has_simpleitk()):
        return _staple_sitk(masks, max_iterations)
    return _staple_em(masks, max_iterations, tolerance)


def _staple_sitk(masks: torch.Tensor, max_iterations: int) -> StapleResult:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError("The STAPLE backend 'simpleitk' needs SimpleITK: pip install 'xaiscope[annotators]'.") from None
    n, a, h, w = masks.shape
    images = [sitk.GetImageFromArray(masks[:, j].numpy().astype(np.uint8)) for j in range(a)]
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetMaximumIterations(max_iterations)
    prob = sitk.GetArrayFromImage(f.Execute(images)).reshape(n, h, w)
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float64))
    return StapleResult(
        p,
        p >= 0.5,
        np.asarray(f.GetSensitivity()),
        np.asarray(f.GetSpecificity()),
        "simpleitk",
        f.GetElapsedIterations(),
    )


def _staple_em(masks: torch.Tensor, max_iterations: int, tolerance: float) -> StapleResult:
    n, a, h, w = masks.shape
    d = masks.permute(1, 0, 2, 3).reshape(a, -1).double()  # [A, pixels]
    prior = float(d.mean())
    if prior in (0.0, 1.0):  # every annotator marks nothing (or everything): nothing to weigh
        p = torch.full((n, h, w), prior, dtype=torch.float64)
        return StapleResult(p, p >= 0.5, np.full(a, math.nan), np.full(a, math.nan), "em", 0)
    sens = torch.full((a,), 0.99, dtype=torch.float64)
    spec = torch.full((a,), 0.99, dtype=torch.float64)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        wgt = _posterior(d, sens, spec, prior)  # E-step: P(truth = 1 | decisions) per pixel
        new_sens = (d * wgt).sum(1) / wgt.sum().clamp_min(1e-300)  # M-step
        new_spec = ((1 - d) * (1 - wgt)).sum(1) / (1 - wgt).sum().clamp_min(1e-300)
        moved = max(float((new_sens - sens).abs().max()), float((new_spec - spec).abs().max()))
        sens, spec = new_sens, new_spec
        if moved < tolerance:
            break
    p = _posterior(d, sens, spec, prior).view(n, h, w)
    return StapleResult(p, p >= 0.5, sens.numpy(), spec.numpy(), "em", iterations)


def _posterior(d: torch.Tensor, sens: torch.Tensor, spec: torch.Tensor, prior: float) -> torch.Tensor:
    """Per pixel the probability that the truth is foreground given the decisions ``d`` ``[A, pixels]``."""
    eps = 1e-12
    s, q = sens.clamp(eps, 1 - eps)[:, None], spec.clamp(eps, 1 - eps)[:, None]
    log_fg = math.log(prior) + (d * s.log() + (1 - d) * (1 - s).log()).sum(0)
    log_bg = math.log(1 - prior) + ((1 - d) * q.log() + d * (1 - q).log()).sum(0)
    return torch.sigmoid(log_fg - log_bg)


def top_fraction(maps: torch.Tensor, area: torch.Tensor | float) -> torch.Tensor:
    """Bool ``[N, H, W]``: each map's ``k`` largest pixels, ``k = area`` pixels per image when
    ``area`` is a tensor ``[N]`` of pixel counts, else the share ``area`` of the pixels
    (at least 1 pixel; ties broken by position)."""
    m = maps.flatten(1).double()
    n, p = m.shape
    if isinstance(area, torch.Tensor):
        k = area.to(device=m.device, dtype=torch.long).clamp(1, p)
    else:
        k = torch.full((n,), max(1, round(float(area) * p)), dtype=torch.long, device=m.device)
    order = torch.argsort(-m, dim=1, stable=True)
    keep = torch.arange(p, device=m.device)[None, :] < k[:, None]
    out = torch.zeros_like(m, dtype=torch.bool)
    out.scatter_(1, order, keep)
    return out.view(maps.shape[0], *maps.shape[-2:])


def verdict(value: float, low: float, high: float) -> str:
    """``inside`` the experts' range ``[low, high]``, ``below`` or ``above`` it (``undefined`` for NaN)."""
    if any(math.isnan(v) for v in (value, low, high)):
        return "undefined"
    return "below" if value < low else "above" if value > high else "inside"


Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the reference of the rows that average a method's means over the annotators
ANNOTATORS = "annotators (mean)"


def methods_vs_annotators(
    maps: dict[str, torch.Tensor],
    masks: torch.Tensor,
    annotators: list[str],
    consensus: torch.Tensor,
    scores: dict[str, Score],
    extra: dict[str, torch.Tensor] | None = None,
):
    """A metric's mean for each method against each annotator and the consensus, with the experts' range.

    Parameters
    ----------
    maps : method -> maps ``[N, H, W]`` (or attributions ``[N, C, H, W]``)
    masks : annotator masks ``[N, A, H, W]``
    consensus : the consensus mask ``[N, H, W]`` (the reference called ``consensus``)
    scores : metric name -> ``score(map, mask)`` giving one value per image ``[N]`` (NaN where
        undefined); the annotators' masks are scored as maps too (passed as bool tensors).
    extra : further references, name -> mask ``[N, H, W]`` (e.g. ``truth``, ``staple``), whose
        experts' range spans every annotator's mask scored against them.

    Returns
    -------
    DataFrame with one row per method, reference (an annotator, ``annotators (mean)``,
    ``consensus`` or a name of ``extra``) and metric: ``method, reference, metric, mean, n,
    expert_low, expert_high, verdict``. The experts' range for annotator ``r`` is the metric
    of each other annotator's mask against ``r``'s (mean over images), from the lowest to
    the highest of them. ``annotators (mean)`` averages the method's means over the
    annotators (``n``: the fewest images scored against one of them); its range and that of
    ``consensus`` span every ordered pair of different annotators (for Dice and IoU, the
    pairwise range). ``verdict`` places the method's mean in the range.
    """
    import pandas as pd

    masks = _check(masks)
    a = masks.shape[1]
    rows = []
    for metric, score in scores.items():
        pair = np.full((a, a), math.nan)  # pair[b, r]: annotator b's mask scored against r's
        for b, r in itertools.permutations(range(a), 2):
            pair[b, r] = _mean(score(masks[:, b], masks[:, r]))[0]
        refs = [(name, masks[:, r], [pair[b, r] for b in range(a) if b != r]) for r, name in enumerate(annotators)]
        every_pair = [pair[b, r] for b, r in itertools.permutations(range(a), 2)]
        refs.append(("consensus", consensus.bool(), every_pair))
        for name, ref in (extra or {}).items():
            ref = ref.bool()
            refs.append((name, ref, [_mean(score(masks[:, b], ref))[0] for b in range(a)]))
        for method, m in maps.items():
            for k, (name, ref, experts) in enumerate(refs):
                mean, count = _mean(score(m, ref))
                low, high = _range(experts)
                rows.append((method, name, metric, mean, count, low, high, verdict(mean, low, high)))
                if k == a - 1:  # after the last annotator: the mean over them against every pair of experts
                    means = [r[3] for r in rows[-a:] if not math.isnan(r[3])]
                    mean = float(np.mean(means)) if means else math.nan
                    count = min(r[4] for r in rows[-a:])
                    low, high = _range(every_pair)
                    rows.append((method, ANNOTATORS, metric, mean, count, low, high, verdict(mean, low, high)))
    return pd.DataFrame(
        rows, columns=["method", "reference", "metric", "mean", "n", "expert_low", "expert_high", "verdict"]
    )


def _range(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


def _mean(v: torch.Tensor) -> tuple[float, int]:
    """Mean of the finite values of ``v`` and how many there are (NaN, 0 when none)."""
    out = v.detach().cpu().double().numpy().reshape(-1)
    out = out[np.isfinite(out)]
    return (float(out.mean()), int(out.size)) if out.size else (math.nan, 0)

"""Meta-evaluation: how reliable is a metric itself (the MetaQuantus protocol).

Hedström et al. 2023, "The Meta-Evaluation Problem in Explainable AI: Identifying
Reliable Estimators with MetaQuantus", TMLR (arXiv:2302.07265). A reliable metric's
scores stay put under a *minor* perturbation that leaves the model's predictions
unchanged (noise resilience, NR) and move under a *disruptive* one that changes them
(adversarial reactivity, AR). Four perturbation tests, the paper's default levels:

=================  ==========================================================  ======
test               perturbation                                                level
=================  ==========================================================  ======
model resilience   every parameter multiplied by draws of N(1, sigma^2)         0.001
model adversary    the same, large                                             2.0
input resilience   x + U(-eps, eps), clipped to the images' range              0.001
input adversary    the same, large                                             5.0
=================  ==========================================================  ======

Explanations are made for the unperturbed model's predictions y*. Under a model test
each method re-explains with the perturbed model and the metric scores with it; under
an input test the metric scores the perturbed images with the unperturbed explanations,
as the reference code does. A resilience test keeps the images whose prediction stays
y*, an adversary test those whose prediction changes.

For metric q, methods m = 1..M, images kept I, unperturbed scores q*_m and perturbed
scores q^_m (one test, one of K perturbations of one of ``iterations`` iterations):

- intra-consistency IAC: the two-sided Wilcoxon signed-rank p-value of q*_m(I) against
  q^_m(I) (``zero_method="zsplit"``; 1 when every difference is zero); for an adversary
  test 1 - p. Averaged over methods and perturbations.
- inter-consistency IEC, resilience: the share of (image, rank position) pairs in which
  the methods' order by q* equals their order by q^ (``argsort`` over methods, stable);
  adversary: the share of (method, image) pairs in which q* is better than q^ (the
  metric's direction). Averaged over perturbations.
- meta-consistency MC = (IAC_NR + IAC_AR + IEC_NR + IEC_AR) / 4 per iteration, reported
  as mean and standard deviation over iterations, per space (model, input). A test that
  keeps no image (an adversary test whose noise never changes a prediction) has no
  score: NaN, and so is MC.

A metric that ignores the model and the images scores IAC_AR = IEC_AR = 0 (nothing
moves) and IAC_NR = IEC_NR = 1: MC = 0.5. Model passes: per test, iteration and
perturbation one forward of the N images plus, per method, its explanation (model
tests) and the metric's own passes: about ``4 x iterations x K x M x (E + metric)`` per
image.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import wilcoxon

from xaiscope import models
from xaiscope.evaluate import draws


@dataclass(frozen=True)
class PerturbationTest:
    """One test: ``space`` ("model" or "input"), ``kind`` ("resilience" or "adversary"),
    ``level`` (sigma of the multiplicative weight noise, or eps of the input noise)."""

    space: str
    kind: str
    level: float

    @property
    def name(self) -> str:
        return f"{self.space} {self.kind}"


PAPER_TESTS = (
    PerturbationTest("model", "resilience", 0.001),
    PerturbationTest("model", "adversary", 2.0),
    PerturbationTest("input", "resilience", 0.001),
    PerturbationTest("input", "adversary", 5.0),
)


def perturbed_model(model: torch.nn.Module, sigma: float, g: torch.Generator) -> torch.nn.Module:
    """A copy of ``model`` with every parameter multiplied by draws of N(1, sigma^2)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(draws.normal(g, p.shape, 1.0, sigma, p.device).to(p.dtype))
    return out


def perturbed_images(x: torch.Tensor, eps: float, g: torch.Generator) -> torch.Tensor:
    """``x + U(-eps, eps)``, clipped to the range of ``x``."""
    return (x + draws.uniform(g, x.shape, -eps, eps, x.device)).clamp(float(x.min()), float(x.max()))


def iac(q: np.ndarray, q_hat: np.ndarray, keep: np.ndarray, adversary: bool) -> float:
    """Intra-consistency of one method under one perturbation (module docstring)."""
    d = q[keep] - q_hat[keep]
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    if np.all(d == 0):
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)
    return 1.0 - p if adversary else p


def iec(q_star: np.ndarray, q_hat: np.ndarray, keep: np.ndarray, adversary: bool, lower_is_better: bool) -> float:
    """Inter-consistency under one perturbation; ``q_star``, ``q_hat``: [methods, images]."""
    if not keep.any():
        return math.nan
    a, b = q_star[:, keep], q_hat[:, keep]
    if adversary:
        return float(np.mean(a < b if lower_is_better else a > b))
    return float(np.mean(np.argsort(a, axis=0, kind="stable") == np.argsort(b, axis=0, kind="stable")))


def meta_evaluate(
    metric,
    model: torch.nn.Module,
    x: torch.Tensor,
    methods: list,
    *,
    mask: torch.Tensor | None = None,
    tests: tuple[PerturbationTest, ...] = PAPER_TESTS,
    iterations: int = 3,
    perturbations: int = 5,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Meta-evaluate ``metric`` (a metric instance) with the explainers ``methods`` on
    images ``x`` (and ``mask`` for localisation metrics).

    Returns ``(summary, detail)``: ``summary`` one row per space with IAC_NR, IAC_AR,
    IEC_NR, IEC_AR (means over iterations), MC and MC_std; ``detail`` one row per (test,
    iteration) with IAC, IEC and the share of images kept.
    """
    if len(methods) < 2:
        raise ValueError("meta-evaluation compares methods: give at least two.")
    lower = metric.direction == "lower"
    with models.eval_mode(model):
        y = models.forward(model, x, batch_size=batch_size).argmax(dim=1)
    maps = {ex.name: ex(model, x, y) for ex in methods}
    q_star = np.stack([_scores(metric, model, x, y, maps[ex.name], mask, ex) for ex in methods])
    rows = []
    for t_index, test in enumerate(tests):
        adversary = test.kind == "adversary"
        for it in range(iterations):
            iac_values, iec_values, kept = [], [], []
            for p in range(perturbations):
                g = draws.generator(seed, x.device, stream=(t_index * iterations + it) * perturbations + p)
                net, xt = model, x
                if test.space == "model":
                    net = perturbed_model(model, test.level, g)
                else:
                    xt = perturbed_images(x, test.level, g)
                with models.eval_mode(net):
                    pred = models.forward(net, xt, batch_size=batch_size).argmax(dim=1)
                keep = (pred != y if adversary else pred == y).cpu().numpy()
                q_hat = np.stack(
                    [
                        _scores(metric, net, xt, y, ex(net, x, y) if test.space == "model" else maps[ex.name], mask, ex)
                        for ex in methods
                    ]
                )
                iac_values += [iac(q_star[m], q_hat[m], keep, adversary) for m in range(len(methods))]
                iec_values.append(iec(q_star, q_hat, keep, adversary, lower))
                kept.append(float(keep.mean()))
            rows.append(
                {
                    "space": test.space,
                    "test": test.kind,
                    "level": test.level,
                    "iteration": it,
                    "iac": _nanmean(iac_values),
                    "iec": _nanmean(iec_values),
                    "kept": float(np.mean(kept)),
                }
            )
    detail = pd.DataFrame(rows)
    return summarise(detail), detail


def summarise(detail: pd.DataFrame) -> pd.DataFrame:
    """Per space: the four consistency means over iterations, MC and its spread over iterations."""
    out = []
    for space, d in detail.groupby("space", sort=False):
        per_it = {}
        for kind, short in (("resilience", "NR"), ("adversary", "AR")):
            part = d[d["test"] == kind].set_index("iteration")
            per_it[f"IAC_{short}"] = part["iac"]
            per_it[f"IEC_{short}"] = part["iec"]
        table = pd.DataFrame(per_it)
        mc = table.mean(axis=1, skipna=False)  # NaN where a test kept no image
        out.append(
            {
                "space": space,
                **{k: float(v.mean()) for k, v in per_it.items()},
                "MC": float(mc.mean()),
                "MC_std": float(mc.std(ddof=0)),
            }
        )
    return pd.DataFrame(out)


def _scores(metric, model, x, y, a, mask, explainer) -> np.ndarray:
    return metric(model, x, y, a, mask=mask, explainer=explainer).double().cpu().numpy()


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

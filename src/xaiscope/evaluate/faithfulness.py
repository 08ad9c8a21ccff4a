"""Faithfulness metrics: declarations of the perturbation mechanism (``perturbation.py``).

Each metric names its units, order, steps, fill and curve summary. Where the
definition matches Quantus 0.6 the defaults give Quantus' numbers (for single-channel
images: Quantus treats every channel value as a feature, we treat every pixel, with
all its channels, as one).
"""

from __future__ import annotations

import math

import torch

from xaiscope import models
from xaiscope.errors import MetricError
from xaiscope.evaluate import draws, stats
from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate.base import ABS, ABS_T, NORM, NORM_F, OUTPUT_L, OUTPUT_P, Metric, Param, register


def _hw(shape) -> int:
    return shape[1] * shape[2] if shape is not None else float("nan")


class _Faithfulness(Metric):
    category = "faithfulness"
    needs = frozenset({"model"})

    def output(self):
        return self.hparams.get("output", "softmax")


def _fill_param(default: str, extra: tuple = ()) -> Param:
    return Param(default, str, "value for changed pixels", choices=P.FILLS + extra)


# ------------------------------------------------------------------ deletion / insertion
class _Curve(_Faithfulness):
    """Deletion / insertion: shared code."""

    insertion = False
    params = {
        "steps": Param(20, int, "number of steps T; the curve has T+1 points", low=1),
        "order": Param(
            "morf", str, "most relevant first (morf), least (lerf) or random", choices=("morf", "lerf", "random")
        ),
        "patch_size": Param(1, int, "side of the square units (1 = pixels)", low=1),
        "fill": _fill_param("black"),
        "sigma": Param(5.0, float, "blur standard deviation in pixels (fill='blur')", low=0.0),
        "output": OUTPUT_P,
        "abs": ABS,
    }
    passes_formula = "steps + 1"

    def _passes(self, shape, e):
        return self.hparams["steps"] + 1

    def curves(self, model, x, y, a, mask=None, explainer=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fractions [T+1], values [N, T+1])``: f_y after changing each fraction of units
        (fraction 0 = the image itself for deletion, the fill alone for insertion)."""
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            return self._curves(model, x, y, a)

    def score_and_curves(self, model, x, y, a, mask=None, explainer=None):
        """``(scores [N], fractions [T+1], values [N, T+1])`` from one set of model passes
        (what ``__call__`` and :meth:`curves` give, without computing the curve twice)."""
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            frac, vals = self._curves(model, x, y, a)
        scores = stats.trapz(vals, dx=1.0 / self.hparams["steps"])
        return scores.to(device=x.device, dtype=torch.float32), frac, vals

    def _curves(self, model, x, y, a):
        hp = self.hparams
        m = self.map(a)
        units = P.pixel_units(m) if hp["patch_size"] == 1 else P.patch_units(m, hp["patch_size"])
        g = draws.generator(hp["seed"], x.device, 1)
        rank = P.ranks(units, hp["order"], g)
        t = hp["steps"]
        frac = torch.arange(t + 1, dtype=torch.float64) / t
        hi = torch.round(frac * units.size).long()
        steps = P.RankSteps(units, rank, torch.zeros_like(hi), hi)
        fill = P.make_fill(hp["fill"], x, t + 1, seed=hp["seed"], sigma=hp["sigma"])
        vals = P.run(
            model, x, y, steps, fill, batch_size=self.batch_size, output=self.output(), insertion=self.insertion
        )
        return frac.to(x.device), vals

    def _score(self, model, x, y, a, mask, explainer):
        frac, vals = self._curves(model, x, y, a)
        return stats.trapz(vals, dx=1.0 / self.hparams["steps"])


@register
class Deletion(_Curve):
    """Deletion: change the most relevant units first (fixed fractions ``t/T`` of the units,
    t = 0..T) to the fill and record ``f_y``; score = area under the curve over the
    fraction axis ([0, 1], trapezoid). ``curves()`` returns the whole curve.

    Petsiuk et al. 2018, "RISE", BMVC, arXiv:1806.07421; Samek et al. 2017 (MoRF).
    Lower is better; passes = steps + 1.
    """

    name, direction, stochastic = "deletion", "lower", True
    reference = "Petsiuk et al. 2018, RISE, BMVC, arXiv:1806.07421"


@register
class Insertion(_Curve):
    """Insertion: start from the fill (default a Gaussian blur of the image, sigma 5 px) and
    reveal the most relevant units first in fixed fractions ``t/T``; score = area under
    ``f_y`` over the fraction axis. ``curves()`` returns the whole curve.

    Petsiuk et al. 2018, "RISE", BMVC, arXiv:1806.07421. Higher is better; passes = steps + 1.
    """

    name, direction, stochastic, insertion = "insertion", "higher", True, True
    reference = "Petsiuk et al. 2018, RISE, BMVC, arXiv:1806.07421"
    params = {**_Curve.params, "fill": _fill_param("blur")}


# ------------------------------------------------------------------ Quantus curve metrics
@register
class PixelFlipping(_Faithfulness):
    """Pixel flipping: change ``features_in_step`` pixels at a time, most relevant first and
    cumulatively, to the fill; record ``f_y`` after each step (T = ceil(HW / k) points,
    the unchanged image not included); score = trapezoid area with unit spacing
    (Quantus' ``return_auc_per_sample``). ``curves()`` gives the curve.

    Bach et al. 2015, "On pixel-wise explanations ... by LRP", PLoS ONE 10:e0130140.
    Lower is better; passes = ceil(H W / features_in_step).
    """

    name, direction = "pixel_flipping", "lower"
    reference = "Bach et al. 2015, PLoS ONE 10(7):e0130140"
    params = {
        "features_in_step": Param(1, int, "pixels changed per step", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_P,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "ceil(H*W / features_in_step)"

    def _passes(self, shape, e):
        return math.ceil(_hw(shape) / self.hparams["features_in_step"])

    def curves(self, model, x, y, a, mask=None, explainer=None):
        """``(steps [T], values [N, T])``: f_y after each step."""
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            v = self._values(model, x, y, a)
        return torch.arange(1, v.shape[1] + 1, device=x.device), v

    def _values(self, model, x, y, a):
        steps = P.pixel_steps(self.map(a), self.hparams["features_in_step"], "morf")
        fill = P.make_fill(self.hparams["fill"], x, steps.T)
        return P.run(model, x, y, steps, fill, batch_size=self.batch_size, output=self.output())

    def _score(self, model, x, y, a, mask, explainer):
        return stats.trapz(self._values(model, x, y, a))


class _Patches(_Faithfulness):
    def _patch_steps(self, x, a, limit=None):
        units = P.patch_units(self.map(a), self.hparams["patch_size"])
        order = self.hparams.get("order", "morf")
        g = draws.generator(self.hparams.get("seed", 0), x.device, 2)
        lo, hi = P.cumulative(1, units.size, limit)
        return P.RankSteps(units, P.ranks(units, order, g), lo, hi)


@register
class RegionPerturbation(_Patches):
    """Region perturbation: change ``patch_size`` x ``patch_size`` patches one at a time,
    cumulatively, in ``order`` of their attribution sum, for ``regions_evaluation`` steps;
    curve = ``f_y(x) - f_y(x_t)``; score = trapezoid area with unit spacing (Quantus returns
    the curve; its ``get_auc_score`` is the mean of these areas).

    Samek et al. 2017, "Evaluating the visualization of what a DNN has learned", IEEE TNNLS
    28:2660. Higher is better (for MoRF); passes = 1 + min(patches, regions_evaluation).
    """

    name, direction, stochastic = "region_perturbation", "higher", True
    reference = "Samek et al. 2017, IEEE TNNLS 28(11):2660-2673"
    params = {
        "patch_size": Param(8, int, "patch side", low=1),
        "regions_evaluation": Param(100, int, "steps", low=1),
        "order": Param("morf", str, "unit order", choices=("morf", "lerf", "random")),
        "fill": _fill_param("black"),
        "output": OUTPUT_P,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "1 + min(ceil(H/patch_size)*ceil(W/patch_size), regions_evaluation)"

    def _passes(self, shape, e):
        p = self.hparams["patch_size"]
        return 1 + min(math.ceil(shape[1] / p) * math.ceil(shape[2] / p), self.hparams["regions_evaluation"])

    def _values(self, model, x, y, a):
        steps = self._patch_steps(x, a, self.hparams["regions_evaluation"])
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(self.hparams["fill"], x, steps.T),
            batch_size=self.batch_size,
            output=self.output(),
        )
        return f0.unsqueeze(1) - v

    def curves(self, model, x, y, a, mask=None, explainer=None):
        """``(steps [T], f(x) - f(x_t) [N, T])``."""
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            v = self._values(model, x, y, a)
        return torch.arange(1, v.shape[1] + 1, device=x.device), v

    def _score(self, model, x, y, a, mask, explainer):
        return stats.trapz(self._values(model, x, y, a))


@register
class Selectivity(_Patches):
    """Selectivity: change all ``patch_size`` patches one at a time, most relevant first,
    cumulatively; curve = ``f_y(x_t)``; score = trapezoid area with unit spacing (Quantus'
    ``get_auc_score`` per image).

    Montavon et al. 2018, "Methods for interpreting and understanding deep neural networks",
    Digital Signal Processing 73:1-15. Lower is better; passes = number of patches.
    """

    name, direction = "selectivity", "lower"
    reference = "Montavon et al. 2018, Digital Signal Processing 73:1-15"
    params = {
        "patch_size": Param(8, int, "patch side", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_P,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "ceil(H/patch_size)*ceil(W/patch_size)"

    def _passes(self, shape, e):
        p = self.hparams["patch_size"]
        return math.ceil(shape[1] / p) * math.ceil(shape[2] / p)

    def _score(self, model, x, y, a, mask, explainer):
        steps = self._patch_steps(x, a)
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(self.hparams["fill"], x, steps.T),
            batch_size=self.batch_size,
            output=self.output(),
        )
        return stats.trapz(v)


# ------------------------------------------------------------------ correlation metrics
@register
class FaithfulnessCorrelation(_Faithfulness):
    """Faithfulness correlation: for ``nr_runs`` random pixel subsets of size ``subset_size``
    (fill each subset, one subset at a time), the Pearson correlation between the subset's
    attribution sum and the output drop ``f_y(x) - f_y(x_S)``.

    Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations", IJCAI.
    Higher is better; passes = 1 + nr_runs. Seeded subsets (Quantus draws from NumPy's global
    state; the tests replay those draws).
    """

    name, direction, stochastic = "faithfulness_correlation", "higher", True
    reference = "Bhatt et al. 2020, IJCAI, arXiv:2005.00631"
    params = {
        "nr_runs": Param(100, int, "random subsets", low=2),
        "subset_size": Param(224, int, "pixels per subset", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_L,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "1 + nr_runs"

    def _passes(self, shape, e):
        return 1 + self.hparams["nr_runs"]

    def _score(self, model, x, y, a, mask, explainer):
        m = self.map(a).flatten(1).double()
        n, hw = m.shape
        s = self.hparams["subset_size"]
        if s >= hw:
            raise MetricError(
                f"faithfulness_correlation: subset_size {s} must be smaller than the {hw} pixels of an image."
            )
        g = draws.generator(self.hparams["seed"], x.device, 3)
        idx = draws.subsets(g, n, self.hparams["nr_runs"], hw, s, x.device)
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        steps = P.SubsetSteps(idx, hw)
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(self.hparams["fill"], x, steps.T, seed=self.hparams["seed"]),
            batch_size=self.batch_size,
            output=self.output(),
        )
        att = m.gather(1, idx.flatten(1)).view(n, steps.T, s).sum(-1)
        return stats.pearson(att, f0.unsqueeze(1) - v)


@register
class FaithfulnessEstimate(_Faithfulness):
    """Faithfulness estimate: change ``features_in_step`` pixels at a time (most relevant
    first, each window alone, not cumulatively); Pearson correlation between the window's
    attribution sum and the output drop.

    Alvarez-Melis & Jaakkola 2018, "Towards robust interpretability with self-explaining
    neural networks", NeurIPS. Higher is better; passes = 1 + ceil(H W / features_in_step).
    """

    name, direction = "faithfulness_estimate", "higher"
    reference = "Alvarez-Melis & Jaakkola 2018, NeurIPS, arXiv:1806.07538"
    params = {
        "features_in_step": Param(1, int, "pixels per step", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_L,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "1 + ceil(H*W / features_in_step)"

    def _passes(self, shape, e):
        return 1 + math.ceil(_hw(shape) / self.hparams["features_in_step"])

    def _score(self, model, x, y, a, mask, explainer):
        steps = P.pixel_steps(self.map(a), self.hparams["features_in_step"], "morf", cumulative_steps=False)
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(self.hparams["fill"], x, steps.T),
            batch_size=self.batch_size,
            output=self.output(),
        )
        return stats.pearson(steps.unit_sums(), f0.unsqueeze(1) - v)


@register
class Monotonicity(_Faithfulness):
    """Monotonicity: start from the fill everywhere and add pixels back ``features_in_step`` at
    a time in order of increasing attribution, cumulatively; 1 if ``f_y`` never decreases,
    else 0.

    Arya et al. 2019, "One explanation does not fit all", arXiv:1909.03012. **Departs from
    Quantus 0.6**, whose implementation writes the baseline value (not the image) into the
    already-filled baseline, so its curve is constant and every map scores True; we add the
    image's pixels back, as the paper. Steps go to the model in order and an image stops
    as soon as its curve decreases (its score is then 0 whatever follows). Higher is
    better; passes = ceil(H W / features_in_step) at most (images that fail stop early).
    """

    name, direction = "monotonicity", "higher"
    reference = "Arya et al. 2019, arXiv:1909.03012"
    params = {
        "features_in_step": Param(1, int, "pixels per step", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_P,
        "abs": ABS_T,
        "normalise": NORM,
    }
    passes_formula = "ceil(H*W / features_in_step) at most"

    def _passes(self, shape, e):
        return math.ceil(_hw(shape) / self.hparams["features_in_step"])

    def _score(self, model, x, y, a, mask, explainer):
        steps = P.pixel_steps(self.map(a), self.hparams["features_in_step"], "lerf")
        fill = P.make_fill(self.hparams["fill"], x, steps.T)
        n, T = x.shape[0], steps.T
        # Steps are evaluated in blocks, in order; an image whose curve has already decreased
        # scores 0 whatever follows, so its later steps are never sent to the model.
        ok = torch.ones(n, dtype=torch.bool, device=x.device)
        last = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
        t0 = 0
        while t0 < T and bool(ok.any()):
            t1 = min(T, t0 + max(1, self.batch_size // int(ok.sum())))
            valid = torch.zeros(n, T, dtype=torch.bool, device=x.device)
            valid[:, t0:t1] = ok.view(-1, 1)
            v = P.run(
                model, x, y, steps, fill, batch_size=self.batch_size, output=self.output(), insertion=True, valid=valid
            )[:, t0:t1]
            prev = torch.cat([last.view(-1, 1), v], dim=1)
            ok &= (prev.diff(dim=1) >= 0).all(dim=1)
            last = v[:, -1]
            t0 = t1
        return ok.double()


@register
class MonotonicityCorrelation(_Faithfulness):
    """Monotonicity correlation: for windows of ``features_in_step`` pixels in order of increasing
    attribution, change the window alone ``nr_samples`` times (fill ``uniform``: one U(0, 1)
    value per perturbed image) and measure the variance ``mean (f_y(x') - f_y(x))^2 / f_y(x)^2``
    (unscaled where ``|f_y(x)| < eps``); Spearman correlation of window attribution sums with
    these variances.

    Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584. Higher is better;
    passes = 1 + ceil(H W / features_in_step) * nr_samples.
    """

    name, direction, stochastic = "monotonicity_correlation", "higher", True
    reference = "Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584"
    params = {
        "features_in_step": Param(1, int, "pixels per step", low=1),
        "nr_samples": Param(100, int, "repeats", low=1),
        "eps": Param(1e-5, float, "smallest |f| that rescales", low=0.0),
        "fill": _fill_param("uniform"),
        "output": OUTPUT_P,
        "abs": ABS_T,
        "normalise": NORM,
    }
    passes_formula = "1 + ceil(H*W / features_in_step) * nr_samples"

    def _passes(self, shape, e):
        return 1 + math.ceil(_hw(shape) / self.hparams["features_in_step"]) * self.hparams["nr_samples"]

    def _score(self, model, x, y, a, mask, explainer):
        hp = self.hparams
        units = P.pixel_units(self.map(a))
        rank = P.ranks(units, "lerf")
        lo, hi = P.windows(hp["features_in_step"], units.size)
        t, r = lo.numel(), hp["nr_samples"]
        steps = P.RankSteps(units, rank, lo.repeat_interleave(r), hi.repeat_interleave(r))
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(hp["fill"], x, steps.T, seed=hp["seed"]),
            batch_size=self.batch_size,
            output=self.output(),
        ).view(-1, t, r)
        inv = torch.where(f0.abs() >= hp["eps"], 1.0 / f0.abs(), torch.ones_like(f0)) ** 2
        var = ((v - f0.view(-1, 1, 1)) ** 2).mean(-1) * inv.unsqueeze(1)
        att = steps.unit_sums(lo, hi)
        return stats.spearman(att, var)


@register
class SensitivityN(_Faithfulness):
    """Sensitivity-n: remove the most relevant pixels cumulatively, ``features_in_step`` at a
    time, up to ``n_max_percentage`` of the image; per image, the Pearson correlation over
    steps between the attribution sum of all removed pixels and the output drop
    ``f_y(x) - f_y(x_S)``.

    Ancona et al. 2018, "Towards better understanding of gradient-based attribution methods",
    ICLR. Quantus 0.6 returns one correlation per step computed *across images*, using only
    the current window's attribution sum; ``per_n()`` returns exactly that list. Higher is
    better; passes = 1 + floor(n_max_percentage H W / features_in_step).
    """

    name, direction = "sensitivity_n", "higher"
    reference = "Ancona et al. 2018, ICLR, arXiv:1711.06104"
    params = {
        "features_in_step": Param(1, int, "pixels per step", low=1),
        "n_max_percentage": Param(0.8, float, "largest share of pixels removed", low=0.0, high=1.0),
        "fill": _fill_param("black"),
        "output": OUTPUT_P,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "1 + floor(n_max_percentage*H*W / features_in_step)"

    def _limit(self, hw):
        return int(self.hparams["n_max_percentage"] * hw // self.hparams["features_in_step"])

    def _passes(self, shape, e):
        return 1 + self._limit(_hw(shape))

    def _parts(self, model, x, y, a):
        m, k = self.map(a), self.hparams["features_in_step"]
        steps = P.pixel_steps(m, k, "morf", limit=self._limit(m[0].numel()))
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(
            model,
            x,
            y,
            steps,
            P.make_fill(self.hparams["fill"], x, steps.T),
            batch_size=self.batch_size,
            output=self.output(),
        )
        return f0.unsqueeze(1) - v, steps.unit_sums(), steps.unit_sums(steps.hi - k, steps.hi)

    def _score(self, model, x, y, a, mask, explainer):
        deltas, cum, _ = self._parts(model, x, y, a)
        return stats.pearson(cum, deltas)

    def per_n(self, model, x, y, a) -> torch.Tensor:
        """Quantus' output: for each step, the Pearson correlation across images between the
        step's window attribution sum and the output drop (``[T]``)."""
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            deltas, _, win = self._parts(model, x, y, a)
        return stats.pearson(deltas.t(), win.t())


@register
class IROF(_Faithfulness):
    """Iterative removal of features: SLIC superpixels (scikit-image, ``n_segments``) ordered by
    mean attribution, removed cumulatively (fill: the image mean); curve
    ``f_y(x_t) / f_y(x)`` over the K superpixels; score = ``K - trapz(curve)`` (area over the
    curve, unit spacing).

    Rieger & Hansen 2020, "IROF: a low resource evaluation metric for explanation methods",
    arXiv:2003.08747. Quantus 0.6 fills with the mean of the whole *batch* of partly removed
    images and pads curves of images with fewer superpixels with zeros, so its score depends
    on the other images of the batch; ``fill="running_mean"`` reproduces Quantus run with
    ``batch_size=1`` (mean of the partly removed image at each step). Higher is better;
    passes = 1 + K (K about n_segments).
    """

    name, direction = "irof", "higher"
    reference = "Rieger & Hansen 2020, arXiv:2003.08747"
    params = {
        "n_segments": Param(100, int, "SLIC target number of superpixels", low=2),
        "compactness": Param(10.0, float, "SLIC compactness", low=0.0),
        "fill": _fill_param("mean", ("running_mean",)),
        "output": OUTPUT_P,
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "1 + K (superpixels, about n_segments)"

    def _passes(self, shape, e):
        return 1 + self.hparams["n_segments"]

    def _score(self, model, x, y, a, mask, explainer):
        hp = self.hparams
        units = P.superpixel_units(x, self.map(a), hp["n_segments"], hp["compactness"])
        rank = P.ranks(units, "morf")
        lo, hi = P.cumulative(1, units.size)
        steps = P.RankSteps(units, rank, lo, hi)
        valid = torch.arange(steps.T, device=x.device).view(1, -1) < units.count.view(-1, 1)
        if hp["fill"] == "running_mean":
            mu = _running_means(x, steps)  # a superpixel keeps the value it got when it was removed
            per_pix = mu.gather(1, steps.pix_rank.clamp(max=steps.T - 1)).to(x.dtype).view(x.shape[0], 1, *x.shape[2:])
            base = per_pix.expand_as(x)

            def fill(xb, mb, n_idx, t_idx):
                return base[n_idx]
        else:
            fill = P.make_fill(hp["fill"], x, steps.T)
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(model, x, y, steps, fill, batch_size=self.batch_size, output=self.output(), valid=valid)
        curve = torch.where(valid, v / f0.unsqueeze(1), torch.zeros_like(v))
        # trapezoid over each image's own K points
        k = units.count.double()
        inner = curve.sum(1) - curve[:, 0] / 2 - curve.gather(1, (units.count - 1).view(-1, 1)).squeeze(1) / 2
        return k - torch.where(units.count > 1, inner, torch.zeros_like(inner))


def _running_means(x: torch.Tensor, steps) -> torch.Tensor:
    """Quantus' IROF fill at step t: the mean of the image after steps 1..t-1 (``[N, T]``)."""
    n, c, h, w = x.shape
    cur = x.clone()
    out = torch.empty(n, steps.T, device=x.device, dtype=torch.float64)
    idx = torch.arange(n, device=x.device)
    for t in range(steps.T):
        mu = cur.flatten(1).mean(1)
        out[:, t] = mu.double()
        new = steps.mask(idx, torch.full_like(idx, t)).view(n, 1, h, w)
        if t > 0:
            new = new & ~steps.mask(idx, torch.full_like(idx, t - 1)).view(n, 1, h, w)
        cur = torch.where(new, mu.view(-1, 1, 1, 1).to(cur.dtype), cur)
    return out


@register
class ROAD(_Faithfulness):
    """ROAD (remove and debias): for each percentage p, replace the top p% pixels (most
    relevant first) by noisy linear imputation (weighted mean of the neighbours, plus
    Gaussian noise ``noise``) and record whether the prediction stays the target;
    score = mean over percentages (area under the accuracy curve). ``curves()`` returns
    (percentages, [N, P] 0/1); Quantus 0.6 returns the mean of these columns over images.

    Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution
    methods", ICML, arXiv:2202.00449. Lower is better (MoRF); passes = number of percentages
    (``n_percentages`` evenly spaced odd percentages 1, 3, ..., 99 by default).
    """

    name, direction, stochastic = "road", "lower", True
    reference = "Rong et al. 2022, ICML, arXiv:2202.00449"
    params = {
        "percentage_step": Param(2, int, "spacing of the percentages 1, 1+s, ... < 100", low=1, high=99),
        "noise": Param(0.01, float, "imputation noise std", low=0.0),
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "len(range(1, 100, percentage_step))"

    def _passes(self, shape, e):
        return len(range(1, 100, self.hparams["percentage_step"]))

    def curves(self, model, x, y, a, mask=None, explainer=None):
        x, y, a, _ = self._check(model, x, y, a, None, None)
        with models.eval_mode(model):
            return self._curves(model, x, y, a)

    def _curves(self, model, x, y, a):
        pct = torch.arange(1, 100, self.hparams["percentage_step"])
        units = P.pixel_units(self.map(a))
        hi = (units.size * pct.double() / 100).long()
        steps = P.RankSteps(units, P.ranks(units, "morf"), torch.zeros_like(hi), hi)
        fill = P.noisy_linear_fill(x, self.hparams["noise"], self.hparams["seed"])
        v = P.run(
            model, x, y, steps, fill, batch_size=self.batch_size, reduce=lambda out, yb: (out.argmax(1) == yb).double()
        )
        return pct.to(x.device), v

    def _score(self, model, x, y, a, mask, explainer):
        return self._curves(model, x, y, a)[1].mean(1)


@register
class Infidelity(_Faithfulness):
    """Infidelity: mean squared difference between ``sum(a * I)`` and ``f_y(x) - f_y(x - I)``
    over perturbations ``I``: square patches of side ``patch_size`` set to the fill one after
    another in raster order, cumulatively (Quantus' perturbation; it repeats this
    deterministic pass ``n_perturb_samples`` times with identical results, we run it once).

    Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS.
    Lower is better; passes = 1 + ceil(H/patch_size) ceil(W/patch_size).
    """

    name, direction = "infidelity", "lower"
    reference = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    params = {
        "patch_size": Param(4, int, "patch side", low=1),
        "fill": _fill_param("black"),
        "output": OUTPUT_L,
        "abs": ABS,
        "normalise": NORM_F,
    }
    passes_formula = "1 + ceil(H/patch_size)*ceil(W/patch_size)"

    def _passes(self, shape, e):
        p = self.hparams["patch_size"]
        return 1 + math.ceil(shape[1] / p) * math.ceil(shape[2] / p)

    def _score(self, model, x, y, a, mask, explainer):
        n, c, h, w = x.shape
        m = self.map(a)
        pid, count = P.patch_grid(h, w, self.hparams["patch_size"], x.device)
        units = P.Units(
            pid.expand(n, -1), torch.zeros(n, count, device=x.device), torch.full((n,), count, device=x.device)
        )
        raster = torch.arange(count, device=x.device).expand(n, -1)
        lo, hi = P.cumulative(1, count)
        steps = P.RankSteps(units, raster, lo, hi)
        fill = P.make_fill(self.hparams["fill"], x, steps.T)
        f0 = P.base_scores(model, x, y, batch_size=self.batch_size, output=self.output())
        v = P.run(model, x, y, steps, fill, batch_size=self.batch_size, output=self.output())
        # attribution-weighted change sum(a * (x - x_t)): x - x_t = (x - fill) on removed pixels
        base = fill(x, None, torch.arange(n, device=x.device), torch.zeros(n, dtype=torch.long, device=x.device))
        diff = (x - base).double()
        if a.dim() == 4 and a.shape[1] == c and not self.hparams["abs"] and not self.hparams["normalise"]:
            per_pix = (a.double() * diff).sum(1).flatten(1)
        else:
            per_pix = (m.double().unsqueeze(1) * diff).sum(1).flatten(1)
        per_patch = torch.zeros(n, count, device=x.device, dtype=torch.float64).index_add_(1, pid, per_pix)
        asum = per_patch.cumsum(1)
        return ((f0.unsqueeze(1) - v - asum) ** 2).mean(1)


@register
class Sufficiency(_Faithfulness):
    """Sufficiency: for each image, among the other images whose maps are close (standardised
    Euclidean distance, divided by the largest distance in the set, at most ``threshold``),
    the share predicted as the same class; 0 when no map is close. Computed over the whole
    set passed in one call.

    Dasgupta et al. 2022, "Framework for evaluating faithfulness of local explanations", ICML.
    Higher is better; passes = 1.
    """

    name, direction, set_level = "sufficiency", "higher", True
    reference = "Dasgupta et al. 2022, ICML, arXiv:2202.00734"
    params = {
        "threshold": Param(0.6, float, "closeness threshold on normalised distances", low=0.0),
        "abs": ABS_T,
        "normalise": NORM,
    }
    passes_formula = "1"

    def _passes(self, shape, e):
        return 1

    def _score(self, model, x, y, a, mask, explainer):
        m = self.map(a).flatten(1).double()
        sim = _close_pairs(m, self.hparams["threshold"])
        pred = models.forward(model, x, batch_size=self.batch_size).argmax(1)
        same = pred.view(1, -1) == pred.view(-1, 1)
        cnt = sim.sum(-1)
        return torch.where(
            cnt > 0, (same & sim).sum(-1).double() / cnt.clamp_min(1), torch.zeros_like(cnt, dtype=torch.float64)
        )


def _close_pairs(m: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pairs (i != j) whose standardised Euclidean distance / max distance <= threshold."""
    n = m.shape[0]
    # Quantus standardises by the variance of the set stacked twice (2n rows, unbiased):
    # the same mean, so var = 2 sum (m - mean)^2 / (2n - 1)
    var = 2 * (m - m.mean(0)).square().sum(0) / (2 * n - 1)
    z = m / var.sqrt()
    d = torch.cdist(z, z)
    d = torch.nan_to_num(d, nan=float("inf"))
    fin = d[torch.isfinite(d)]
    if fin.numel() and fin.abs().max() > 0:
        d = d / fin.abs().max()
    close = d <= threshold
    close &= ~torch.eye(n, dtype=torch.bool, device=m.device)
    return close

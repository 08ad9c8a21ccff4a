"""Faithfulness metrics: declarations of the perturbation mechanism (``perturbation.py``).

Each metric names its feature space, order, schedule, fill, readout and curve summary
in a :class:`~xaiscope.evaluate.perturbation.Perturbation`; its pass count follows from
the declaration. Where the definition matches Quantus 0.6 the defaults give Quantus'
numbers (for single-channel images: Quantus treats every channel value as a feature, we
treat every pixel, with all its channels, as one).

On volumes ``[N, C, D, H, W]`` every metric here is the same declaration on voxels: a pixel
below is a voxel, a patch a cube of side ``patch_size`` (``ceil(D/p) ceil(H/p) ceil(W/p)``
of them), a superpixel a SLIC supervoxel, the blur and ROAD's imputation work along D, H
and W; ``H W`` in a pass count becomes ``D H W``. A volume of one slice (D = 1) scores as
its image.
"""

from __future__ import annotations

import math

import torch

from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate import stats
from xaiscope.evaluate.base import ABS, ABS_T, NORM_F, OUTPUT_L, OUTPUT_P, Param, register
from xaiscope.evaluate.perturbation import settings
from xaiscope.evaluate.setlevel import block_agreement

ORDER = Param("morf", str, "most relevant first (morf), least (lerf) or random", choices=P.ORDERS)
FEATURES_IN_STEP = P.FEATURES_IN_STEP
PATCH_SIZE = Param("auto", int, f"patch side; {P.AUTO_DOC}", low=1, auto=P.auto_patch_size(8))


class _Faithfulness(P.PerturbationMetric):
    category = "faithfulness"


# ------------------------------------------------------------------ deletion / insertion
class _Curve(_Faithfulness):
    params = {
        "steps": Param(20, int, "number of steps T; the curve has T+1 points", low=1),
        "order": ORDER,
        "patch_size": Param(1, int, "side of the square units (1 = pixels)", low=1),
        "fill": P.fill_param("black"),
        "sigma": Param(5.0, float, "blur standard deviation in pixels (fill='blur')", low=0.0),
        "output": OUTPUT_P,
        "abs": ABS,
    }
    spec = P.Perturbation(P.Patches(), "order", P.Fractions(), summary=P.area, stream=1)


@register
class Deletion(_Curve):
    """Deletion: change the most relevant units first (fixed fractions ``t/T`` of the units,
    t = 0..T) to the fill and record ``f_y``; score = area under the curve over the
    fraction axis ([0, 1], trapezoid). ``curves()`` returns ``(fractions [T+1], f_y [N, T+1])``
    (fraction 0 = the image itself).

    Petsiuk et al. 2018, "RISE", BMVC, arXiv:1806.07421; Samek et al. 2017 (MoRF).
    Lower is better; passes = steps + 1.
    """

    name, direction, stochastic = "deletion", "lower", True
    reference = "Petsiuk et al. 2018, RISE, BMVC, arXiv:1806.07421"


@register
class Insertion(_Curve):
    """Insertion: start from the fill (default a Gaussian blur of the image, sigma 5 px) and
    reveal the most relevant units first in fixed fractions ``t/T``; score = area under
    ``f_y`` over the fraction axis. ``curves()`` returns the whole curve (fraction 0 = the
    fill alone).

    Petsiuk et al. 2018, "RISE", BMVC, arXiv:1806.07421. Higher is better; passes = steps + 1.
    """

    name, direction, stochastic = "insertion", "higher", True
    reference = "Petsiuk et al. 2018, RISE, BMVC, arXiv:1806.07421"
    params = {**_Curve.params, "fill": P.fill_param("blur")}
    spec = P.Perturbation(P.Patches(), "order", P.Fractions(), insertion=True, summary=P.area, stream=1)


# ------------------------------------------------------------------ Quantus curve metrics
@register
class PixelFlipping(_Faithfulness):
    """Pixel flipping: change ``features_in_step`` pixels at a time, most relevant first and
    cumulatively, to the fill; record ``f_y`` after each step (T = ceil(HW / k) points,
    the unchanged image not included); score = trapezoid area with unit spacing
    (Quantus' ``return_auc_per_sample``). ``curves()`` gives ``(steps [T], f_y [N, T])``.

    Bach et al. 2015, "On pixel-wise explanations ... by LRP", PLoS ONE 10:e0130140.
    Lower is better; passes = ceil(H W / features_in_step) (D H W for volumes).
    """

    name, direction = "pixel_flipping", "lower"
    reference = "Bach et al. 2015, PLoS ONE 10(7):e0130140"
    params = settings({"features_in_step": FEATURES_IN_STEP})
    spec = P.Perturbation(P.Pixels(), "morf", P.Cumulative("features_in_step"), summary=P.area)


@register
class RegionPerturbation(_Faithfulness):
    """Region perturbation: change ``patch_size`` x ``patch_size`` patches one at a time,
    cumulatively, in ``order`` of their attribution sum, for ``regions_evaluation`` steps;
    curve = ``f_y(x) - f_y(x_t)`` (``curves()``); score = trapezoid area with unit spacing
    (Quantus returns the curve; its ``get_auc_score`` is the mean of these areas).

    Samek et al. 2017, "Evaluating the visualization of what a DNN has learned", IEEE TNNLS
    28:2660. Higher is better (for MoRF); passes = 1 + min(patches, regions_evaluation) (patches:
    ceil(H/p) ceil(W/p), cubes ceil(D/p) ceil(H/p) ceil(W/p) for volumes).
    """

    name, direction, stochastic = "region_perturbation", "higher", True
    reference = "Samek et al. 2017, IEEE TNNLS 28(11):2660-2673"
    params = settings({"patch_size": PATCH_SIZE, "regions_evaluation": Param(100, int, "steps", low=1), "order": ORDER})
    spec = P.Perturbation(
        P.Patches(),
        "order",
        P.Cumulative(limit="regions_evaluation"),
        base=True,
        curve="drop",
        summary=P.area,
        stream=2,
    )


@register
class Selectivity(_Faithfulness):
    """Selectivity: change all ``patch_size`` patches one at a time, most relevant first,
    cumulatively; curve = ``f_y(x_t)``; score = trapezoid area with unit spacing (Quantus'
    ``get_auc_score`` per image).

    Montavon et al. 2018, "Methods for interpreting and understanding deep neural networks",
    Digital Signal Processing 73:1-15. Lower is better; passes = number of patches (cubes for volumes).
    """

    name, direction = "selectivity", "lower"
    reference = "Montavon et al. 2018, Digital Signal Processing 73:1-15"
    params = settings({"patch_size": PATCH_SIZE})
    spec = P.Perturbation(P.Patches(), "morf", P.Cumulative(), summary=P.area)


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
    params = settings(
        {
            "nr_runs": Param(100, int, "random subsets", low=2),
            "subset_size": Param(224, int, "pixels per subset", low=1),
        },
        output=OUTPUT_L,
    )
    spec = P.Perturbation(P.Pixels(), None, P.RandomSubsets(), base=True, summary=P.correlation)


@register
class FaithfulnessEstimate(_Faithfulness):
    """Faithfulness estimate: change ``features_in_step`` pixels at a time (most relevant
    first, each window alone, not cumulatively); Pearson correlation between the window's
    attribution sum and the output drop.

    Alvarez-Melis & Jaakkola 2018, "Towards robust interpretability with self-explaining
    neural networks", NeurIPS. Higher is better; passes = 1 + ceil(H W / features_in_step)
    (D H W for volumes).
    """

    name, direction = "faithfulness_estimate", "higher"
    reference = "Alvarez-Melis & Jaakkola 2018, NeurIPS, arXiv:1806.07538"
    params = settings({"features_in_step": FEATURES_IN_STEP}, output=OUTPUT_L)
    spec = P.Perturbation(P.Pixels(), "morf", P.Windows("features_in_step"), base=True, summary=P.correlation)


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
    better; passes = ceil(H W / features_in_step) at most (images that fail stop early; D H W
    for volumes).

    Which ``features_in_step`` keeps it informative: the score is 1 only if *every* step
    raises ``f_y`` (on a linear model: every step's summed contribution ``w_i (x_i - fill)``
    is >= 0, ``tests/test_monotonicity.py``), and on a real model a single pixel almost
    always lowers it somewhere. Measured on ``small_cnn`` trained on the 64 x 64 lesion
    benchmark (48 test images, softmax of the predicted class; share of maps scoring 1 for
    integrated gradients / Grad-CAM / saliency / random): features_in_step = 1, 16, 64 and 256
    give 0 for every method; 410 and 512 (8-10 steps): 0.02 / 0 / 0-0.04 against 0.23-0.31
    for random; 1024 (4 steps): 0.10 / 0.27 / 0.08 against 0.75; 2048 (2 steps): 0.96 for
    all. So only coarse steps (features_in_step of about H W / 16 to H W / 4, i.e. 4 to 16
    steps) leave the score any variance, and there it can favour random maps: read it with
    the random baseline and the run's non-discriminative flag (on that model it is flagged
    at features_in_step = 64), or prefer ``monotonicity_correlation``.
    """

    name, direction = "monotonicity", "higher"
    reference = "Arya et al. 2019, arXiv:1909.03012"
    params = settings({"features_in_step": FEATURES_IN_STEP}, absolute=ABS_T)
    spec = P.Perturbation(P.Pixels(), "lerf", P.Cumulative("features_in_step"), insertion=True)
    cost = spec.cost().at_most()

    def run(self, model, x, y, steps, fill, output, valid, base):
        """Steps in blocks, in order; an image whose curve has already decreased scores 0
        whatever follows, so its later steps are never sent to the model."""
        n, t_all = x.shape[0], steps.T
        ok = torch.ones(n, dtype=torch.bool, device=x.device)
        last = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
        values = torch.full((n, t_all), math.nan, dtype=torch.float64, device=x.device)
        seen = torch.zeros(n, t_all, dtype=torch.bool, device=x.device)
        t0 = 0
        while t0 < t_all and bool(ok.any()):
            t1 = min(t_all, t0 + max(1, self.batch_size // int(ok.sum())))
            block = torch.zeros(n, t_all, dtype=torch.bool, device=x.device)
            block[:, t0:t1] = ok.view(-1, 1)
            _, v, _ = super().run(model, x, y, steps, fill, output, block, False)
            values, seen = torch.where(block, v, values), seen | block
            ok &= _rises(last, v[:, t0:t1], block[:, t0:t1])
            last, t0 = v[:, t1 - 1], t1
        return None, values, seen

    def summarise(self, c):
        return _rises(torch.full_like(c.values[:, 0], -math.inf), c.values, c.valid).double()


def _rises(start: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[N]``: every evaluated value of ``v`` ``[N, T]`` is >= the one before (``start`` first)."""
    d = torch.cat([start.view(-1, 1), v], 1).diff(dim=1)
    return ((d >= 0) | ~valid).all(dim=1)


@register
class MonotonicityCorrelation(_Faithfulness):
    """Monotonicity correlation: for windows of ``features_in_step`` pixels in order of increasing
    attribution, change the window alone ``nr_samples`` times (fill ``uniform``: one U(0, 1)
    value per perturbed image) and measure the variance ``mean (f_y(x') - f_y(x))^2 / f_y(x)^2``
    (unscaled where ``|f_y(x)| < eps``); Spearman correlation of window attribution sums with
    these variances.

    Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584. Higher is better;
    passes = 1 + ceil(H W / features_in_step) * nr_samples (D H W for volumes).
    """

    name, direction, stochastic = "monotonicity_correlation", "higher", True
    reference = "Nguyen & Rodriguez Martinez 2020, arXiv:2007.07584"
    params = settings(
        {
            "features_in_step": FEATURES_IN_STEP,
            "nr_samples": Param(100, int, "repeats", low=1),
            "eps": Param(1e-5, float, "smallest |f| that rescales", low=0.0),
        },
        fill="uniform",
        absolute=ABS_T,
    )
    spec = P.Perturbation(P.Pixels(), "lerf", P.Windows("features_in_step", repeat="nr_samples"), base=True)

    def summarise(self, c):
        f0, r = c.base, self.hparams["nr_samples"]
        v = c.values.view(f0.shape[0], -1, r)
        inv = torch.where(f0.abs() >= self.hparams["eps"], 1.0 / f0.abs(), torch.ones_like(f0)) ** 2
        var = ((v - f0.view(-1, 1, 1)) ** 2).mean(-1) * inv.unsqueeze(1)
        return stats.spearman(c.steps.unit_sums()[:, ::r], var)


@register
class SensitivityN(_Faithfulness):
    """Sensitivity-n: remove the most relevant pixels cumulatively, ``features_in_step`` at a
    time, up to ``n_max_percentage`` of the image; per image, the Pearson correlation over
    steps between the attribution sum of all removed pixels and the output drop
    ``f_y(x) - f_y(x_S)``.

    Ancona et al. 2018, "Towards better understanding of gradient-based attribution methods",
    ICLR. Quantus 0.6 returns one correlation per step computed *across images*, using only
    the current window's attribution sum; ``per_n()`` returns exactly that list. Higher is
    better; passes = 1 + floor(n_max_percentage H W / features_in_step) (D H W for volumes).
    """

    name, direction = "sensitivity_n", "higher"
    reference = "Ancona et al. 2018, ICLR, arXiv:1711.06104"
    params = settings(
        {
            "features_in_step": FEATURES_IN_STEP,
            "n_max_percentage": Param(0.8, float, "largest share of pixels removed", low=0.0, high=1.0),
        }
    )
    spec = P.Perturbation(
        P.Pixels(), "morf", P.Cumulative("features_in_step", share="n_max_percentage"), base=True, summary=P.correlation
    )

    def per_n(self, model, x, y, a) -> torch.Tensor:
        """Quantus' output: for each step, the Pearson correlation across images between the
        step's window attribution sum and the output drop (``[T]``)."""
        c = self._checked_curve(model, x, y, a)
        hi = c.steps.hi
        return stats.pearson(c.drop().t(), c.steps.unit_sums(hi - self.hparams["features_in_step"], hi).t())


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
    passes = 1 + K (K about n_segments; supervoxels on volumes).
    """

    name, direction = "irof", "higher"
    reference = "Rieger & Hansen 2020, arXiv:2003.08747"
    params = settings(
        {
            "n_segments": Param(100, int, "SLIC target number of superpixels", low=2),
            "compactness": Param(10.0, float, "SLIC compactness", low=0.0),
        },
        fill=P.fill_param("mean", ("running_mean",)),
    )
    spec = P.Perturbation(P.Superpixels(), "morf", P.Cumulative(), base=True)

    def summarise(self, c):
        curve = torch.where(c.valid, c.values / c.base.unsqueeze(1), torch.zeros_like(c.values))
        count = c.units.count
        # trapezoid over each image's own K points
        inner = curve.sum(1) - curve[:, 0] / 2 - curve.gather(1, (count - 1).view(-1, 1)).squeeze(1) / 2
        return count.double() - torch.where(count > 1, inner, torch.zeros_like(inner))


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
    params = settings(
        {
            "percentage_step": Param(2, int, "spacing of the percentages 1, 1+s, ... < 100", low=1, high=99),
            "noise": Param(0.01, float, "imputation noise std", low=0.0),
        },
        fill=None,
        output=None,
    )
    spec = P.Perturbation(P.Pixels(), "morf", P.Percentages(), "noisy_linear", "correct", summary=P.mean)


@register
class Infidelity(_Faithfulness):
    """Infidelity: mean squared difference between ``sum(a * I)`` and ``f_y(x) - f_y(x - I)``
    over perturbations ``I``: square patches of side ``patch_size`` set to the fill one after
    another in raster order, cumulatively (Quantus' perturbation; it repeats this
    deterministic pass ``n_perturb_samples`` times with identical results, we run it once).

    Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS.
    Lower is better; passes = 1 + ceil(H/patch_size) ceil(W/patch_size) (times ceil(D/patch_size)
    cubes deep for volumes).
    """

    name, direction = "infidelity", "lower"
    reference = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    params = settings(
        {"patch_size": Param("auto", int, f"patch side; {P.AUTO_DOC}", low=1, auto=P.auto_patch_size(4))},
        output=OUTPUT_L,
        normalise=NORM_F,
    )
    spec = P.Perturbation(P.Patches(), "raster", P.Cumulative(), base=True)

    def summarise(self, c):
        x, a, hp = c.x, c.a, self.hparams
        n, ch = x.shape[:2]
        # attribution-weighted change sum(a * (x - x_t)): x - x_t = (x - fill) on removed pixels
        fill = c.fill(x, None, torch.arange(n, device=x.device), torch.zeros(n, dtype=torch.long, device=x.device))
        diff = (x - fill).double()
        if a.dim() == x.dim() and a.shape[1] == ch and not hp["abs"] and not hp["normalise"]:
            per_pix = (a.double() * diff).sum(1).flatten(1)
        else:
            per_pix = (c.m.double().unsqueeze(1) * diff).sum(1).flatten(1)
        per_patch = torch.zeros(n, c.units.size, device=x.device, dtype=torch.float64)
        per_patch.index_add_(1, c.units.ids[0], per_pix)
        return ((c.drop() - per_patch.cumsum(1)) ** 2).mean(1)


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
    params = settings(
        {"threshold": Param(0.6, float, "closeness threshold on normalised distances", low=0.0)},
        fill=None,
        output=None,
        absolute=ABS_T,
    )
    spec = P.Perturbation(output="class", base=True)

    def summarise(self, c):
        return stats.agreement(c.base, self._set_pairs(c.m))

    def _set_pairs(self, m):
        return _close_pairs(m.flatten(1).double(), self.hparams["threshold"])

    def set_agreement_blocks(self, read, n, predicted, block):
        """:func:`_close_pairs` by blocks: the column means and variances in two passes, the
        largest finite distance in a third, then the pairs and their agreement."""
        spans = [(s, min(n, s + block)) for s in range(0, n, block)]
        mean = sum(read(s, e).double().sum(0) for s, e in spans) / n
        var = 2 * sum((read(s, e).double() - mean).square().sum(0) for s, e in spans) / (2 * n - 1)
        sd = var.sqrt()

        def dist(s, e, s2, e2):
            return torch.nan_to_num(torch.cdist(read(s, e).double() / sd, read(s2, e2).double() / sd), nan=float("inf"))

        top = 0.0
        for s, e in spans:
            for s2, e2 in spans:
                d = dist(s, e, s2, e2)
                fin = d[torch.isfinite(d)]
                top = max(top, float(fin.abs().max())) if fin.numel() else top
        scale = top if top > 0 else 1.0
        thr = self.hparams["threshold"]
        return block_agreement(predicted, n, block, lambda s, e, s2, e2: dist(s, e, s2, e2) / scale <= thr)


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

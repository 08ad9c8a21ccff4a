"""Randomisation metrics: perturb the model (or the target), re-explain, compare.

The mechanism (:func:`randomised_models`) copies the model and re-initialises its
layers one after another (every module with ``reset_parameters``, from the output
(``top_down``) or the input (``bottom_up``), cumulatively, each reset seeded with
``seed + 1`` as Quantus does) without touching the user's model or the global random
state. Maps are compared with a batched similarity (Spearman by default).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import numpy as np
import torch

from xaiscope import models
from xaiscope.evaluate import stats
from xaiscope.evaluate.base import ABS, ABS_T, NORM, NORM_F, Metric, Param, register
from xaiscope.explain.postprocess import pool
from xaiscope.models.forward import check_target_range

SIMILARITIES = ("spearman", "pearson", "ssim", "ssim_flat")


def similarity(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row similarity of maps ``[N, H, W]``: Spearman, Pearson, 2-D SSIM or SSIM of the
    flattened maps (what Quantus 0.6 computes)."""
    return similarity_to(kind, a)(b)


def similarity_to(kind: str, ref: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``b -> similarity(kind, ref, b)``; for Spearman ``ref``'s ranks are computed once for
    the many maps it is compared with."""
    if kind == "spearman":
        r = stats.rank(ref.flatten(1))
        return lambda b: stats.pearson(r, stats.rank(b.flatten(1)))
    if kind == "pearson":
        return lambda b: stats.pearson(ref.flatten(1), b.flatten(1))
    if kind == "ssim":
        return lambda b: stats.ssim(ref, b)
    return lambda b: stats.ssim(ref.flatten(1), b.flatten(1))


def randomised_models(model: torch.nn.Module, order: str, seed: int) -> Iterator[tuple[str, torch.nn.Module]]:
    """Yield ``(layer name, model copy with this and all earlier layers re-initialised)``."""
    rnd = copy.deepcopy(model)
    mods = [(n, m) for n, m in rnd.named_modules() if hasattr(m, "reset_parameters")]
    if order == "top_down":
        mods = mods[::-1]
    dev = models.model_device(model)
    devices = [dev] if dev.type == "cuda" else []
    for name, mod in mods:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1)
            mod.reset_parameters()
        yield name, rnd


def n_layers(model) -> int:
    return sum(1 for _, m in model.named_modules() if hasattr(m, "reset_parameters")) if model is not None else 0


class _Randomisation(Metric):
    category = "randomisation"
    needs = frozenset({"model", "explainer"})

    def _explain(self, explainer, model, x, y, norm: str = "max") -> torch.Tensor:
        m = pool(explainer(model, x, y), "sum")
        if self.hparams.get("normalise", False) and norm == "max":
            m = self.map(m)
        elif self.hparams.get("abs", False):
            m = m.abs()
        return m


@register
class ModelParameterRandomisation(_Randomisation):
    """Model parameter randomisation test (MPRT): re-initialise layers cumulatively from the
    top; for each step, the similarity between the given map and the randomised model's map;
    score = mean over layers (``summary="average"``) or the last layer (``"last"``).
    ``layers()`` returns every layer's scores. A method whose maps do not change (a
    model-independent map such as the input or an edge detector) scores 1.

    Adebayo et al. 2018, "Sanity checks for saliency maps", NeurIPS, arXiv:1810.03292.
    Quantus 0.6's average also includes the similarity with the re-explained unrandomised
    model (its key "original" is not the "orig" it skips); ``summary="quantus_average"``
    reproduces that. Lower is better; passes = L * E (L = layers with parameters;
    + E for quantus_average).
    """

    name, direction = "model_parameter_randomisation", "lower"
    reference = "Adebayo et al. 2018, NeurIPS, arXiv:1810.03292"
    params = {
        "layer_order": Param("top_down", str, "randomisation order", choices=("top_down", "bottom_up")),
        "similarity": Param("spearman", str, "map similarity", choices=SIMILARITIES),
        "summary": Param("average", str, "how layers are summarised", choices=("average", "last", "quantus_average")),
        "seed": Param(42, int, "seed of the re-initialisation", low=0),
        "abs": ABS_T,
        "normalise": NORM,
    }
    passes_formula = "L * E (+ E for summary=quantus_average)"

    def _passes(self, shape, e):
        return float("nan")

    def passes(self, shape=None, explainer=None, model=None) -> float:
        """``L * E``; needs the ``model`` to count its layers L."""
        e = float(explainer.passes(shape)) if explainer is not None else float("nan")
        extra = e if self.hparams["summary"] == "quantus_average" else 0.0
        return n_layers(model) * e + extra if model is not None else float("nan")

    def layers(self, model, x, y, a, explainer) -> dict[str, torch.Tensor]:
        """Similarity per randomised layer (keys in randomisation order)."""
        x, y, a, _ = self._check(model, x, y, a, None, explainer)
        with models.eval_mode(model):
            return self._layers(model, x, y, a, explainer)

    def _layers(self, model, x, y, a, explainer):
        hp = self.hparams
        a0 = self.map(a)
        out = {}
        sim = similarity_to(hp["similarity"], a0)
        if hp["summary"] == "quantus_average":
            out["original"] = sim(self._explain(explainer, model, x, y))
        for name, rnd in randomised_models(model, hp["layer_order"], hp["seed"]):
            with models.eval_mode(rnd):
                out[name] = sim(self._explain(explainer, rnd, x, y))
        return out

    def _score(self, model, x, y, a, mask, explainer):
        per = self._layers(model, x, y, a, explainer)
        if self.hparams["summary"] == "last":
            return list(per.values())[-1]
        return torch.stack(list(per.values())).mean(0)


@register
class SmoothModelParameterRandomisation(_Randomisation):
    """Smooth MPRT: as model_parameter_randomisation (bottom-up by default), but every map,
    including the unrandomised one (the given ``a`` is not used), is the mean of the
    explainer's maps over ``nr_samples`` noisy copies of the image (Gaussian noise with
    std ``noise_magnitude * (max - min)`` of each image; the last copy is noise-free), then
    ``|.|``; score = mean Spearman similarity over layers.

    Hedstroem et al. 2023, "Sanity checks revisited", XAI in Action (NeurIPS workshop),
    arXiv:2401.06465. Quantus' average includes the unrandomised similarity (see
    model_parameter_randomisation; ``summary="quantus_average"``). Lower is better;
    passes = (L + 1) * nr_samples * E.
    """

    name, direction, stochastic = "smooth_model_parameter_randomisation", "lower", True
    reference = "Hedstroem et al. 2023, arXiv:2401.06465"
    params = {
        "layer_order": Param("bottom_up", str, "randomisation order", choices=("top_down", "bottom_up")),
        "nr_samples": Param(50, int, "noisy copies per map", low=1),
        "noise_magnitude": Param(0.1, float, "noise std relative to the image range", low=0.0),
        "similarity": Param("spearman", str, "map similarity", choices=SIMILARITIES),
        "summary": Param("average", str, "how layers are summarised", choices=("average", "last", "quantus_average")),
        "seed": Param(42, int, "seed of the re-initialisation and the noise", low=0),
        "abs": ABS_T,
    }
    passes_formula = "(L + 1) * nr_samples * E"

    def _explains_itself(self):
        return True

    def passes(self, shape=None, explainer=None, model=None) -> float:
        e = float(explainer.passes(shape)) if explainer is not None else float("nan")
        return (n_layers(model) + 1) * self.hparams["nr_samples"] * e if model is not None else float("nan")

    def _smooth(self, explainer, model, x, y):
        from xaiscope.evaluate import draws

        k = self.hparams["nr_samples"]
        rng = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
        g = draws.generator(self.hparams["seed"], x.device, 7)
        eps = draws.normal(g, (k - 1, *x.shape), 0.0, 1.0, x.device) * rng * self.hparams["noise_magnitude"]
        xs = torch.cat([(x.unsqueeze(0) + eps).reshape(-1, *x.shape[1:]), x]) if k > 1 else x
        m = pool(explainer(model, xs, y.repeat(k)), "sum").view(k, *x.shape[:1], *x.shape[2:])
        m = m.double().mean(0)
        return m.abs() if self.hparams["abs"] else m

    def _score(self, model, x, y, a, mask, explainer):
        hp = self.hparams
        a0 = self._smooth(explainer, model, x, y)
        per = []
        sim = similarity_to(hp["similarity"], a0)
        if hp["summary"] == "quantus_average":
            per.append(sim(a0))
        for _, rnd in randomised_models(model, hp["layer_order"], hp["seed"]):
            with models.eval_mode(rnd):
                per.append(sim(self._smooth(explainer, rnd, x, y)))
        return per[-1] if hp["summary"] == "last" else torch.stack(per).mean(0)


def discrete_entropy(m: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """Entropy (nats) of the ``bins``-bin histogram of each row over its own range, binned as
    ``np.histogram`` does."""
    v = m.flatten(1).double()
    lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    same = hi == lo
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    idx = ((v - lo) * (bins / (hi - lo))).long().clamp(0, bins)
    idx = torch.where(idx == bins, idx - 1, idx)
    edges = lo + (hi - lo) * torch.arange(bins + 1, device=v.device, dtype=v.dtype).view(1, -1) / bins
    idx = idx - (v < edges.gather(1, idx)).long()
    idx = idx + ((v >= edges.gather(1, (idx + 1).clamp(max=bins))) & (idx != bins - 1)).long()
    counts = torch.zeros(v.shape[0], bins, device=v.device, dtype=v.dtype).scatter_add_(
        1, idx.clamp(0, bins - 1), torch.ones_like(v)
    )
    p = counts / counts.sum(1, keepdim=True)
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(1)


@register
class EfficientModelParameterRandomisation(_Randomisation):
    """Efficient MPRT: re-initialise all layers (bottom-up) and report the relative rise in the
    explanation's complexity, ``(H(a_random) - H(a)) / H(a)``, with ``H`` the entropy of a
    ``n_bins``-bin histogram of the map; both maps come from the explainer.

    Hedstroem et al. 2023, "Sanity checks revisited", arXiv:2401.06465. Higher is better;
    passes = 2 E.
    """

    name, direction = "efficient_model_parameter_randomisation", "higher"
    reference = "Hedstroem et al. 2023, arXiv:2401.06465"
    params = {
        "layer_order": Param("bottom_up", str, "randomisation order", choices=("top_down", "bottom_up")),
        "n_bins": Param(100, int, "histogram bins", low=2),
        "seed": Param(42, int, "seed of the re-initialisation", low=0),
        "abs": ABS,
        "normalise": NORM_F,
    }
    passes_formula = "2 * E"

    def _explains_itself(self):
        return True

    def _passes(self, shape, e):
        return 2 * e

    def _score(self, model, x, y, a, mask, explainer):
        hp = self.hparams
        h0 = discrete_entropy(self._explain(explainer, model, x, y), hp["n_bins"])
        *_, (_, rnd) = randomised_models(model, hp["layer_order"], hp["seed"])  # every layer re-initialised
        with models.eval_mode(rnd):
            h1 = discrete_entropy(self._explain(explainer, rnd, x, y), hp["n_bins"])
        return (h1 - h0) / h0


@register
class RandomLogit(_Randomisation):
    """Random logit: similarity (2-D SSIM by default) between the map for the target and the
    explainer's map for a uniformly drawn other class.

    Sixt et al. 2020, "When explanations lie", ICML, arXiv:1912.09818. Quantus 0.6 computes
    SSIM on the flattened maps (a 1-D signal); ``similarity="ssim_flat"`` reproduces that.
    Classes are drawn with NumPy's ``RandomState(seed).randint`` (one draw for the set,
    as Quantus does for one batch). Lower is better; passes = E (+1 image per call to read
    the number of classes when ``num_classes`` is 0).
    """

    name, direction = "random_logit", "lower"
    reference = "Sixt et al. 2020, ICML, arXiv:1912.09818"
    params = {
        "num_classes": Param(0, int, "number of classes; 0 = read from the model", low=0),
        "similarity": Param("ssim", str, "map similarity", choices=SIMILARITIES),
        "seed": Param(42, int, "seed of the class draw", low=0),
        "abs": ABS,
        "normalise": NORM,
    }
    passes_formula = "E"

    def _passes(self, shape, e):
        return e

    def _score(self, model, x, y, a, mask, explainer):
        k = self.hparams["num_classes"] or models.forward(model, x[:1]).shape[1]
        check_target_range(y, k)
        r = np.random.RandomState(self.hparams["seed"]).randint(0, k - 1, x.shape[0])
        r = torch.as_tensor(r, device=y.device).long()
        y_off = r + (r >= y).long()
        a_off = self._explain(explainer, model, x, y_off)
        return similarity(self.hparams["similarity"], self.map(a), a_off)

"""Randomisation metrics: declarations of the randomise, re-explain, compare mechanism.

A metric declares a :class:`Randomisation`: what is randomised (**randomise**:
``each_layer``: a copy of the model per layer, re-initialised cumulatively in the
``layer_order`` setting's order; ``all_layers``: the copy with every layer
re-initialised; ``target``: the model itself, explained for a randomly drawn other
class), the **reference** map (the given ``a``, or ``explained`` by the explainer on the
model), ``smooth`` (the setting with the number of noisy copies each map is averaged
over, or None), the **comparison** of each randomised map with the reference (a
similarity named by the ``similarity`` setting, or :func:`entropy_rise`) and the
**summary** over randomised models (the ``summary`` setting: ``average``, ``last`` or
``quantus_average``, which also compares the unrandomised model's map).

:func:`randomised_models` copies the model and re-initialises its layers one after
another (every module with ``reset_parameters``, but the normalisation layers of a
transformer: :func:`~xaiscope.evaluate.base.randomisable_layers`; from the output
(``top_down``) or the input (``bottom_up``), cumulatively, each reset seeded with ``seed + 1`` as Quantus
does) without touching the user's model or the global random state. The pass count
follows from the declaration. Volumes work as images: maps ``[N, D, H, W]``, the SSIM in 3-D
(:func:`similarity`), the noisy copies of smooth MPRT drawn per voxel.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch

from xaiscope import models
from xaiscope.evaluate import draws, sharing, stats
from xaiscope.evaluate.base import ABS, ABS_T, NORM, NORM_F, Metric, Param, pooled, randomisable_layers, register
from xaiscope.evaluate.cost import Count, E, L, number, setting
from xaiscope.models.forward import check_target_range

SIMILARITIES = ("spearman", "pearson", "ssim", "ssim_flat")


def similarity(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row similarity of maps ``[N, H, W]`` or ``[N, D, H, W]``: Spearman, Pearson, SSIM of the
    maps in their own dimensions (2-D for images, 3-D with a 7x7x7 window for volumes, as
    ``skimage.metrics.structural_similarity``; NaN for maps thinner than the window) or SSIM
    of the flattened maps (what Quantus 0.6 computes)."""
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
    mods = randomisable_layers(rnd)
    if order == "top_down":
        mods = mods[::-1]
    dev = models.model_device(model)
    devices = [dev] if dev.type == "cuda" else []
    for name, mod in mods:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1)
            mod.reset_parameters()
        yield name, rnd


def entropy_rise(ref: torch.Tensor, hp: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """``b -> (H(b) - H(ref)) / H(ref)`` with ``H`` the :func:`discrete_entropy` of ``n_bins`` bins."""
    h0 = discrete_entropy(ref, hp["n_bins"])
    return lambda b: (discrete_entropy(b, hp["n_bins"]) - h0) / h0


def similarity_setting(ref: torch.Tensor, hp: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The similarity named by the ``similarity`` setting, to ``ref``."""
    return similarity_to(hp["similarity"], ref)


@dataclass(frozen=True)
class Randomisation:
    """A randomisation metric's use of the mechanism (see the module docstring)."""

    randomise: str = "each_layer"
    reference: str = "given"
    compare: Callable[[torch.Tensor, dict], Callable[[torch.Tensor], torch.Tensor]] = similarity_setting
    smooth: str | None = None

    def cost(self) -> Count:
        """Explanations of every randomised model (and of the model for an explained reference),
        each of ``smooth`` noisy copies."""
        maps = L if self.randomise == "each_layer" else number(1)
        if self.reference == "explained":
            maps = maps + 1
        c = maps * (setting(self.smooth) * E if self.smooth else E)
        if self.reference == "given" and self.randomise == "each_layer":
            return c.when("summary", "quantus_average", E)
        return c


class _Randomisation(Metric):
    """A metric declared by a :class:`Randomisation` (class attribute ``spec``)."""

    category = "randomisation"
    needs = frozenset({"model", "explainer"})
    spec: ClassVar[Randomisation]

    def _explains_itself(self) -> bool:
        return self.spec.reference == "explained"

    def _explain(self, explainer, model, x, y, state: tuple = ("model",), original=None) -> torch.Tensor:
        """The map of ``model`` for ``(x, y)``, pooled by sum (with ``smooth``: the mean over the
        noisy copies, in float64), then ``normalise`` / ``abs``. ``state`` names the model's
        parameters (:meth:`_randomised`) of ``original`` (default: ``model``): inside a
        shared-passes block a map of the same state, images, targets and smoothing is explained
        once."""
        smooth = self.spec.smooth
        dims = x.dim() - 2
        scope = sharing.current()
        memo, key = None, None
        if scope is not None:
            memo = scope.table("randomisation", model if original is None else original, x, explainer)
            noise = (self.hparams[smooth], self.hparams["noise_magnitude"], self.hparams["seed"]) if smooth else None
            key = (state, tuple(y.tolist()), noise)
        if memo is not None and key in memo:
            m = memo[key]
            per_map = explainer.passes(tuple(x.shape[1:]), model) * (self.hparams[smooth] if smooth else 1)
            scope.saved += round(per_map * x.shape[0]) if math.isfinite(per_map) else 0
        elif smooth:
            k = self.hparams[smooth]
            xs = torch.cat([(x.unsqueeze(0) + self._noise(x, k)).flatten(0, 1), x]) if k > 1 else x
            m = pooled(explainer(model, xs, y.repeat(k)), dims).view(k, *x.shape[:1], *x.shape[2:]).double().mean(0)
        else:
            m = pooled(explainer(model, x, y), dims)
        if memo is not None:
            memo[key] = m
        if self.hparams.get("normalise", False):
            return self.map(m, dims=dims)
        return m.abs() if self.hparams.get("abs", False) else m

    def _noise(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``[k - 1, N, ...]`` Gaussian noise of std ``noise_magnitude * (max - min)`` of each image."""
        rng = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *[1] * (x.dim() - 1))
        g = draws.generator(self.hparams["seed"], x.device, 7)
        return draws.normal(g, (k - 1, *x.shape), 0.0, 1.0, x.device) * rng * self.hparams["noise_magnitude"]

    def _randomised(self, model, x, y) -> Iterator[tuple[str, torch.nn.Module, torch.Tensor, tuple]]:
        """``(name, model, targets, state)`` to explain and compare, in order. ``state`` names
        the parameters: the model's own, or the seed and the set of re-initialised layers
        (each is reset from ``seed + 1`` whatever the order, so the set determines them)."""
        spec, hp = self.spec, self.hparams
        if spec.randomise == "target":
            k = hp["num_classes"] or models.forward(model, x[:1]).shape[1]
            check_target_range(y, k)
            yield "target", model, draws.other_classes(hp["seed"], y, k), ("model",)
            return
        states = self._random_states(model)
        if spec.randomise == "all_layers":
            *_, (name, rnd) = randomised_models(model, hp["layer_order"], hp["seed"])
            yield name, rnd, y, states[0]
            return
        for (name, rnd), state in zip(randomised_models(model, hp["layer_order"], hp["seed"]), states):
            yield name, rnd, y, state

    def _random_states(self, model) -> list[tuple]:
        """The states of the randomised models this metric explains, in order: the seed and the
        cumulative set of re-initialised layers (``each_layer``), or the set of all (``all_layers``)."""
        hp = self.hparams
        names = [n for n, _ in randomisable_layers(model)]
        names = names[::-1] if hp["layer_order"] == "top_down" else names
        states = [("random", hp["seed"], frozenset(names[: i + 1])) for i in range(len(names))]
        return states if self.spec.randomise == "each_layer" else states[-1:]

    def explained_maps(self, model) -> list[tuple]:
        """The maps this metric explains, as the keys :meth:`_explain` shares them by (state,
        targets, smoothing); the pass plan counts those another metric explains first. Each
        costs E passes per image (``nr_samples`` E smoothed)."""
        spec, hp = self.spec, self.hparams
        noise = (hp[spec.smooth], hp["noise_magnitude"], hp["seed"]) if spec.smooth else None
        out = []
        if spec.reference == "explained" or hp.get("summary") == "quantus_average":
            out.append((("model",), "y", noise))
        if spec.randomise == "target":
            return [*out, (("model",), ("other classes", hp["seed"]), noise)]
        out += [(state, "y", noise) for state in self._random_states(model)]
        return list(dict.fromkeys(out))

    def layers(self, model, x, y, a, explainer) -> dict[str, torch.Tensor]:
        """Comparison per randomised model (keys in randomisation order)."""
        x, y, a, _ = self._check(model, x, y, a, None, explainer)
        with models.eval_mode(model):
            return self._layers(model, x, y, a, explainer)

    def _layers(self, model, x, y, a, explainer) -> dict[str, torch.Tensor]:
        spec, hp = self.spec, self.hparams
        explained = spec.reference == "explained"
        ref = self._explain(explainer, model, x, y) if explained else self.map(a, dims=x.dim() - 2)
        score = spec.compare(ref, hp)
        out = {}
        if hp.get("summary") == "quantus_average":
            out["original"] = score(ref if explained else self._explain(explainer, model, x, y))
        for name, net, targets, state in self._randomised(model, x, y):
            with models.eval_mode(net):
                out[name] = score(self._explain(explainer, net, x, targets, state, original=model))
        return out

    def _score(self, model, x, y, a, mask, explainer):
        per = list(self._layers(model, x, y, a, explainer).values())
        return per[-1] if self.hparams.get("summary", "last") == "last" else torch.stack(per).mean(0)


LAYER_ORDER = Param("top_down", str, "randomisation order", choices=("top_down", "bottom_up"))
SIMILARITY = Param("spearman", str, "map similarity", choices=SIMILARITIES)
SUMMARY = Param("average", str, "how layers are summarised", choices=("average", "last", "quantus_average"))
SEED_42 = Param(42, int, "seed of the re-initialisation", low=0)


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
        "layer_order": LAYER_ORDER,
        "similarity": SIMILARITY,
        "summary": SUMMARY,
        "seed": SEED_42,
        "abs": ABS_T,
        "normalise": NORM,
    }
    spec = Randomisation()


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
        "similarity": SIMILARITY,
        "summary": SUMMARY,
        "seed": Param(42, int, "seed of the re-initialisation and the noise", low=0),
        "abs": ABS_T,
    }
    spec = Randomisation(reference="explained", smooth="nr_samples")


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
        "seed": SEED_42,
        "abs": ABS,
        "normalise": NORM_F,
    }
    spec = Randomisation("all_layers", "explained", entropy_rise)


@register
class RandomLogit(_Randomisation):
    """Random logit: similarity (SSIM by default: 2-D on images, 3-D with a 7x7x7 window on
    volumes, NaN for volumes thinner than 7 voxels along an axis, as scikit-image refuses them)
    between the map for the target and the explainer's map for a uniformly drawn other class.

    Sixt et al. 2020, "When explanations lie", ICML, arXiv:1912.09818. Quantus 0.6 computes
    SSIM on the flattened maps (a 1-D signal); ``similarity="ssim_flat"`` reproduces that.
    Classes are drawn by :func:`~xaiscope.evaluate.draws.other_classes` (one draw for the set,
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
    spec = Randomisation("target")
    cost = spec.cost().about("+ 1 image per call to read the number of classes when num_classes is 0")

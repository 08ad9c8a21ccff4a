"""Robustness metrics: declarations of the re-explanation mechanism.

A metric declares a :class:`Reexplanation`: a **sampler** (:class:`Uniform` or
:class:`Normal` noise added to every value of the image or volume, or horizontal
:class:`Shifts` along W, of every slice of a volume alike), the setting
with the number of **draws**, what the chunked forward helper computes on the perturbed
images besides the explanation (**forward**: ``logits`` or the ``layers``' relative
distance), a **comparison** of each draw with the reference (``[draws, N]`` values),
and a **reduction** over draws (``max`` or ``mean``, ignoring NaN). The reference map is
the given ``a`` or, with ``explain_reference``, the explainer's map of the image.

The mechanism (:meth:`Robustness.reexplain`) sends groups of draws for all images to the
explainer together (about ``batch_size`` images per call; the explainer chunks its own
model calls). Explainer maps are pooled over channels by sum and get the metric's
``abs``/``normalise`` settings, like the given map ``a``. The pass count follows from
the declaration. Noise is drawn in :mod:`~xaiscope.evaluate.draws`, one stream per draw.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar

import torch

from xaiscope import models
from xaiscope.evaluate import draws, sharing, stats
from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate.base import ABS, ABS_T, NORM, NORM_F, Metric, Param, pooled, register
from xaiscope.evaluate.cost import Count, E, setting
from xaiscope.evaluate.setlevel import block_agreement
from xaiscope.models.forward import iter_chunks

NAN = float("nan")


def leaf_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules without children (the model itself excluded): the layers whose outputs
    form the representation ``L(x)`` of representation stability."""
    return [m for m in model.modules() if not list(m.children()) and m is not model]


class LayerDistance:
    """Relative distance of every leaf module's output to a reference, accumulated in hooks.

    :meth:`reference` runs the model on ``x`` and keeps each layer output ``L_l(x)``
    (flattened per image; a module called twice gives two outputs) and ``1 / L_l(x)``
    (zeros replaced by ``eps``). :meth:`distance` runs the model on perturbed copies
    ``x'`` (draw-major rows: row ``j N + i`` is a copy of image ``i``) and returns, per
    row, ``sqrt(sum_l ||(L_l(x') - L_l(x_i)) / L_l(x_i)||^2)`` with the logits. Each chunk
    is compared layer by layer while its activations are in cache; nothing is
    concatenated across layers.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, eps: float):
        self.model, self.batch_size, self.eps = model, batch_size, eps
        self.ref: list[torch.Tensor] = []
        self.inv: list[torch.Tensor] = []

    def _forward(self, x: torch.Tensor, on_output) -> torch.Tensor:
        """Chunked forward of ``x`` calling ``on_output(position, output, rows)`` for every leaf
        output; positions count leaf outputs within one call, from 0; ``rows`` is the chunk's
        slice of ``x``."""
        pos, rows = [0], [slice(0, 0)]

        def hook(_m, _i, o):
            on_output(pos[0], o.detach().flatten(1), rows[0])
            pos[0] += 1

        handles = [m.register_forward_hook(hook) for m in leaf_modules(self.model)]
        outs = []
        try:
            for sl in iter_chunks(x.shape[0], self.batch_size):
                pos[0], rows[0] = 0, sl
                outs.append(models.forward(self.model, x[sl], batch_size=self.batch_size))
        finally:
            for h in handles:
                h.remove()
        return torch.cat(outs)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``; keeps the layer outputs of ``x`` as the reference."""
        parts: dict[int, list[torch.Tensor]] = {}
        out = self._forward(x, lambda k, o, _rows: parts.setdefault(k, []).append(o.clone()))
        self.ref = [torch.cat(parts[k]) for k in sorted(parts)]
        self.inv = [1.0 / torch.where(r == 0, torch.full_like(r, self.eps), r) for r in self.ref]
        return out

    def distance(self, xp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [R, classes], distance [R])`` for perturbed rows ``xp`` ``[R, ...]``."""
        n = self.ref[0].shape[0]
        sq = torch.zeros(xp.shape[0], dtype=torch.float64, device=xp.device)
        draw = [0]

        def on_output(k, o, im):  # im: the chunk's images within the draw
            d = o - self.ref[k][im]
            d.mul_(self.inv[k][im])
            sq[draw[0] * n + im.start : draw[0] * n + im.stop] += torch.linalg.vector_norm(d, dim=1).double().square()

        # one draw at a time, so a chunk's reference is a slice (a view), never a gather
        outs = []
        for j in range(xp.shape[0] // n):
            draw[0] = j
            outs.append(self._forward(xp[j * n : (j + 1) * n], on_output))
        return torch.cat(outs), sq.sqrt()


# ----------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Uniform:
    """``x + d``, ``d`` uniform in ``[low, high)`` per value (``radius`` r: in ``[-r, r)``)."""

    low: str | None = None
    high: str | None = None
    radius: str | None = None

    def perturb(self, x: torch.Tensor, j: int, hp: dict) -> torch.Tensor:
        r = self.radius
        lo, hi = (-hp[r], hp[r]) if r is not None else (hp[self.low], hp[self.high])
        g = draws.generator(hp["seed"], x.device, 100 + j)
        return x + draws.uniform(g, x.shape, lo, hi, x.device).to(x.dtype)


@dataclass(frozen=True)
class Normal:
    """``x + d``, ``d ~ N(mean, std^2)`` per value."""

    mean: str = "perturb_mean"
    std: str = "perturb_std"

    def perturb(self, x, j, hp):
        g = draws.generator(hp["seed"], x.device, 100 + j)
        return x + draws.normal(g, x.shape, hp[self.mean], hp[self.std], x.device).to(x.dtype)


@dataclass(frozen=True)
class Shifts:
    """Draw j translates the image horizontally (along W; every slice of a volume alike) by
    ``-W + (j + 1) ((2W + 1) // steps)`` pixels; uncovered pixels take the image minimum."""

    steps: str = "nr_steps"

    def perturb(self, x, j, hp):
        w, ones = x.shape[-1], [1] * (x.dim() - 1)
        t = -w + (2 * w + 1) // hp[self.steps] * (j + 1)
        src = torch.arange(w, device=x.device) - t
        ok = ((src >= 0) & (src < w)).view(*ones, w)
        return torch.where(ok, x[..., src.clamp(0, w - 1)], x.flatten(1).amin(1).view(-1, *ones).expand_as(x))


@dataclass
class Reference:
    """The unperturbed side: images and maps flattened to ``[N, D]`` (float64), logits ``[N, K]``."""

    x: torch.Tensor
    a: torch.Tensor
    hp: dict
    logits: torch.Tensor | None = None


@dataclass
class Draws:
    """One group of ``k`` draws: images ``xp`` ``[k, N, ...]``, maps ``ap`` ``[k, N, *spatial]``,
    logits ``[k N, K]`` and the layers' relative distance ``[k N]`` where the declaration asks
    for them; ``x`` and ``a`` give images and maps as ``[k, N, D]`` (float64)."""

    xp: torch.Tensor
    ap: torch.Tensor
    logits: torch.Tensor | None = None
    layers: torch.Tensor | None = None
    x = property(lambda self: self.xp.flatten(2).double())
    a = property(lambda self: self.ap.flatten(2).double())


def map_change(r: Reference, d: Draws) -> torch.Tensor:
    """``||a - a_k||_F / ||a||_F`` (NaN for an all-zero map: its relative change is undefined)."""
    den = r.a.norm(dim=1)
    den = torch.where(den > 0, den, torch.full_like(den, NAN))
    return (r.a.unsqueeze(0) - d.a).norm(dim=2) / den


def lipschitz(r: Reference, d: Draws) -> torch.Tensor:
    """``||a - a_k||_2 / (||x - x_k||_2 + 1e-10)``."""
    return (r.a.unsqueeze(0) - d.a).norm(dim=2) / ((r.x.unsqueeze(0) - d.x).norm(dim=2) + 1e-10)


def continuity_ratio(r: Reference, d: Draws) -> torch.Tensor:
    """``||a - a_k||_1 / (||x - x_k||_2 + 1e-9)``."""
    return (r.a.unsqueeze(0) - d.a).abs().sum(-1) / ((r.x.unsqueeze(0) - d.x).norm(dim=2) + 1e-9)


def relative_stability(denominator: Callable[[Reference, Draws], torch.Tensor]):
    """``||(a - a_k) / a|| / den`` (zeros replaced by ``eps_min`` in divisions); NaN for draws
    that change the prediction when ``nan_when_prediction_changes``."""

    def compare(r: Reference, d: Draws) -> torch.Tensor:
        eps = r.hp["eps_min"]
        den = denominator(r, d)
        ratio = _rel(r.a.unsqueeze(0), d.a, eps).norm(dim=2) / (den + (den == 0) * eps)
        if r.hp["nan_when_prediction_changes"]:
            changed = d.logits.argmax(1).view(ratio.shape) != r.logits.argmax(1).unsqueeze(0)
            ratio = torch.where(changed, torch.full_like(ratio, NAN), ratio)
        return ratio

    return compare


def _rel(u: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    return (u - v) / (u + (u == 0) * eps)


def _input_change(r: Reference, d: Draws) -> torch.Tensor:
    return _rel(r.x.unsqueeze(0), d.x, r.hp["eps_min"]).norm(dim=2)


def _logit_change(r: Reference, d: Draws) -> torch.Tensor:
    h0 = r.logits.double()
    return (h0.unsqueeze(0) - d.logits.double().view(-1, *h0.shape)).norm(dim=2)


def _layer_change(r: Reference, d: Draws) -> torch.Tensor:
    return d.layers.view(-1, r.x.shape[0])


@dataclass(frozen=True)
class Reexplanation:
    """A robustness metric's use of the mechanism (see the module docstring)."""

    sampler: Uniform | Normal | Shifts
    compare: Callable[[Reference, Draws], torch.Tensor]
    reduce: str = "max"
    draws: str = "nr_samples"
    forward: str | None = None
    explain_reference: bool = False

    def cost(self) -> Count:
        """Explanations (and forwards) of the draws, plus the reference's."""
        k, per_draw = setting(self.draws), E + 1 if self.forward else E
        if self.explain_reference:
            return (k + 1) * per_draw
        return (1 if self.forward else 0) + k * per_draw


class _Logits:
    """The ``logits`` forward: the model's outputs on the reference and on the draws."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size

    def reference(self, x):
        return models.forward(self.model, x, batch_size=self.batch_size)

    def distance(self, xp):
        return models.forward(self.model, xp, batch_size=self.batch_size), None


class Robustness(Metric):
    """A metric declared by a :class:`Reexplanation` (class attribute ``spec``).

    Metrics that draw the same perturbed inputs (:meth:`share_key`) are scored together
    on one set of re-explanations (:meth:`score_together`); inside a
    :func:`~xaiscope.evaluate.sharing.shared_passes` block the first of them computes every
    member's scores and the others read theirs."""

    category, direction = "robustness", "lower"
    needs = frozenset({"model", "explainer"})
    stochastic = True
    spec: ClassVar[Reexplanation]

    def _explains_itself(self) -> bool:
        return self.spec.explain_reference

    def share_key(self) -> tuple:
        """What the perturbed inputs and their re-explanations depend on: the sampler and the
        settings it reads, the number of draws, the seed, the batch size (it groups the
        draws into explainer calls) and whether the reference is explained."""
        spec, hp = self.spec, self.hparams
        named = [getattr(spec.sampler, f.name) for f in fields(spec.sampler)]
        read = tuple((n, hp[n]) for n in named if isinstance(n, str))
        return (
            type(spec.sampler).__name__,
            read,
            hp[spec.draws],
            hp.get("seed"),
            self.batch_size,
            spec.explain_reference,
        )

    def _score(self, model, x, y, a, mask, explainer):
        scope = sharing.current()
        if scope is None:
            return self.score_together([self], model, x, y, a, explainer)[0]
        done = scope.table("robustness", model, x, y, a, explainer)
        if id(self) in done:
            return done.pop(id(self))
        key, shape = self.share_key(), tuple(x.shape[1:])
        with contextlib.ExitStack() as stack:
            group = [self]
            for m in scope.metrics:
                if isinstance(m, Robustness) and m is not self and id(m) not in done:
                    stack.enter_context(m.sized(shape))
                    if m.share_key() == key:
                        group.append(m)
            scores = self.score_together(group, model, x, y, a, explainer)
            if len(group) > 1:
                own = sum(m.passes(shape, explainer, model) for m in group)
                saved = own - shared_cost(group, float(explainer.passes(shape, model)))
                scope.saved += round(saved * x.shape[0]) if math.isfinite(saved) else 0
        for m, s in zip(group[1:], scores[1:]):
            done[id(m)] = s
        return scores[0]

    def score_together(self, group: list[Robustness], model, x, y, a, explainer) -> list[torch.Tensor]:
        """Scores ``[N]`` of every metric of ``group`` (``self`` first; equal :meth:`share_key`)
        from one set of draws and re-explanations, and one forward per kind the members ask
        for (``logits``, ``layers`` with its ``eps_min``)."""
        dims = x.dim() - 2
        if self.spec.explain_reference:
            a = pooled(explainer(model, x, y), dims)
        fwds: dict[tuple, Any] = {}
        for m in group:
            kind = m._forward_kind()
            if kind is not None and kind not in fwds:
                fwds[kind] = (
                    _Logits(model, m.batch_size)
                    if kind[0] == "logits"
                    else LayerDistance(model, m.batch_size, m.hparams["eps_min"])
                )
        ref_logits = {kind: f.reference(x) for kind, f in fwds.items()}
        refs = []
        for m in group:
            r = Reference(x.flatten(1).double(), m.map(a, dims=dims).flatten(1).double(), m.hparams)
            kind = m._forward_kind()
            if kind is not None:
                r.logits = ref_logits[kind]
            refs.append(r)
        values: list[list[torch.Tensor]] = [[] for _ in group]

        def compare(xp, raw, flat):
            outs = {kind: f.distance(flat) for kind, f in fwds.items()}
            for m, r, v in zip(group, refs, values):
                ap = m.map(raw, dims=dims)
                d = Draws(xp, ap.view(xp.shape[0], x.shape[0], *ap.shape[1:]))
                kind = m._forward_kind()
                if kind is not None:
                    d.logits, d.layers = outs[kind]
                v.append(m.spec.compare(r, d))

        self.reexplain(model, x, y, explainer, compare)
        return [m._reduce(torch.cat(v, 0)) for m, v in zip(group, values)]

    def _forward_kind(self) -> tuple | None:
        kind = self.spec.forward
        if kind is None:
            return None
        return (kind, self.hparams["eps_min"]) if kind == "layers" else (kind,)

    def _reduce(self, v: torch.Tensor) -> torch.Tensor:
        """``[k, N]`` -> ``[N]``: max or mean over draws, ignoring NaN."""
        if self.spec.reduce == "max":
            w = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v).amax(0)
            return torch.where(torch.isinf(w) & (w < 0), torch.full_like(w, NAN), w)
        return torch.nanmean(v, 0)

    def reexplain(self, model, x, y, explainer, on_draws: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]):
        """Draw the perturbed images in groups of about ``batch_size`` images, explain each group
        in one explainer call and hand ``on_draws(xp [k, N, ...], raw maps [k N, ...], flat
        images [k N, ...])`` each group."""
        spec, hp = self.spec, self.hparams
        n, k = x.shape[0], hp[spec.draws]
        per = max(1, self.batch_size // n)
        for start in range(0, k, per):
            kk = min(per, k - start)
            xp = torch.stack([spec.sampler.perturb(x, start + j, hp) for j in range(kk)])
            flat = xp.reshape(kk * n, *x.shape[1:])
            on_draws(xp, explainer(model, flat, y.repeat(kk)), flat)


def shared_cost(group: list[Robustness], e: float) -> float:
    """Model passes per image of ``group`` scored together (equal share keys, ``e`` = E): the
    draws' explanations once (and the reference's when it is explained), and per forward kind
    the reference's and the draws' forwards."""
    lead = group[0]
    k = lead.hparams[lead.spec.draws]
    kinds = {m._forward_kind() for m in group} - {None}
    return (k + int(lead.spec.explain_reference)) * e + len(kinds) * (k + 1)


class _Sensitivity(Robustness):
    reference = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"
    params = {
        "nr_samples": Param(200, int, "perturbations per image", low=1),
        "lower_bound": Param(0.2, float, "noise radius r: uniform in [-r, r]", low=0.0),
        "abs": ABS,
        "normalise": NORM_F,
    }


@register
class MaxSensitivity(_Sensitivity):
    """Max-sensitivity: ``max_k ||a(x) - a(x + d_k)||_F / ||a(x)||_F`` with ``d_k`` uniform noise
    in the L-inf ball of radius ``lower_bound``.

    Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS.
    Lower is better; passes = nr_samples * E.
    """

    name = "max_sensitivity"
    spec = Reexplanation(Uniform(radius="lower_bound"), map_change)


@register
class AvgSensitivity(_Sensitivity):
    """Avg-sensitivity: the mean over draws of ``||a(x) - a(x + d_k)||_F / ||a(x)||_F``
    (uniform noise of radius ``lower_bound``).

    Yeh et al. 2019, NeurIPS. Lower is better; passes = nr_samples * E.
    """

    name = "avg_sensitivity"
    spec = Reexplanation(Uniform(radius="lower_bound"), map_change, "mean")


@register
class LocalLipschitz(Robustness):
    """Local Lipschitz estimate: ``max_k ||a(x) - a(x + d_k)||_2 / (||d_k||_2 + 1e-10)`` with
    Gaussian noise ``d_k ~ N(perturb_mean, perturb_std^2)``.

    Alvarez-Melis & Jaakkola 2018, "On the robustness of interpretability methods",
    arXiv:1806.08049. Lower is better; passes = nr_samples * E.
    """

    name = "local_lipschitz"
    reference = "Alvarez-Melis & Jaakkola 2018, arXiv:1806.08049"
    params = {
        "nr_samples": Param(200, int, "perturbations per image", low=1),
        "perturb_mean": Param(0.0, float, "noise mean"),
        "perturb_std": Param(0.1, float, "noise std", low=0.0),
        "abs": ABS,
        "normalise": NORM,
    }
    spec = Reexplanation(Normal(), lipschitz)


def _relative(denominator: Callable[[Reference, Draws], torch.Tensor], forward: str = "logits") -> Reexplanation:
    return Reexplanation(Uniform("lower_bound", "upper_bound"), relative_stability(denominator), forward=forward)


class _Relative(Robustness):
    reference = "Agarwal et al. 2022, arXiv:2203.06877"
    params = {
        "nr_samples": Param(200, int, "perturbations per image", low=1),
        "lower_bound": Param(0.02, float, "noise low (uniform in [low, high])"),
        "upper_bound": Param(0.2, float, "noise high"),
        "eps_min": Param(1e-6, float, "guard against division by zero", low=0.0),
        "nan_when_prediction_changes": Param(True, bool, "ignore draws that change the prediction"),
        "abs": ABS,
        "normalise": NORM_F,
    }


@register
class RelativeInputStability(_Relative):
    """Relative input stability: ``max_k ||(a - a_k) / a||_F / ||(x - x_k) / x||_F`` over uniform
    perturbations ``x_k`` (``[lower_bound, upper_bound]``) that keep the prediction
    (zeros are replaced by ``eps_min`` in divisions).

    Agarwal et al. 2022, "Rethinking stability for attribution-based explanations",
    arXiv:2203.06877. Quantus 0.6 takes ``np.max`` over draws, so one changed prediction
    makes the whole score NaN; the paper maximises over the draws that keep the prediction,
    which we do. Lower is better; passes = 1 + nr_samples * (E + 1).
    """

    name, spec = "relative_input_stability", _relative(_input_change)


@register
class RelativeOutputStability(_Relative):
    """Relative output stability: ``max_k ||(a - a_k) / a||_F / ||h(x) - h(x_k)||_2`` with ``h``
    the logits; draws that change the prediction are ignored (see relative_input_stability).

    Agarwal et al. 2022, arXiv:2203.06877. Lower is better; passes = 1 + nr_samples * (E + 1).
    """

    name, spec = "relative_output_stability", _relative(_logit_change)


@register
class RelativeRepresentationStability(_Relative):
    """Relative representation stability: ``max_k ||(a - a_k) / a||_F / ||(L(x) - L(x_k)) / L(x)||_2``
    with ``L`` the outputs of every leaf module of the model, concatenated (as Quantus'
    default); draws that change the prediction are ignored.

    Agarwal et al. 2022, arXiv:2203.06877. Lower is better; passes = 1 + nr_samples * (E + 1).
    """

    name = "relative_representation_stability"
    spec = _relative(_layer_change, "layers")


@register
class Continuity(Robustness):
    """Continuity: translate the image horizontally in ``nr_steps`` steps of
    ``(2W + 1) // nr_steps`` pixels from ``-W`` (fill: the image minimum), re-explain, and take
    ``max_s ||a(x) - a(x_s)||_1 / (||x - x_s||_2 + 1e-9)``; both maps come from the explainer.

    Montavon et al. 2018, Digital Signal Processing 73:1-15. Lower is better;
    passes = (nr_steps + 1) * E.
    """

    name, stochastic = "continuity", False
    reference = "Montavon et al. 2018, Digital Signal Processing 73:1-15"
    params = {"nr_steps": Param(28, int, "translations", low=1), "abs": ABS_T, "normalise": NORM}
    spec = Reexplanation(Shifts(), continuity_ratio, draws="nr_steps", explain_reference=True)


@register
class Consistency(P.PerturbationMetric):
    """Consistency: among the other images whose maps discretise to the same label, the share
    predicted as the same class (set-level: computed over all images passed together).
    Discretisation ``top_n_sign`` (default, the paper's intent): the positions and signs of the
    ``n`` largest-magnitude pixels; ``first_n_sign``: the signs of the first ``n`` pixels in
    raster order, which is what Quantus 0.6's ``top_n_sign`` computes.

    Dasgupta et al. 2022, "Framework for evaluating faithfulness of local explanations", ICML.
    Higher is better; passes = 1.
    """

    name, category, direction, set_level = "consistency", "robustness", "higher", True
    reference = "Dasgupta et al. 2022, ICML, arXiv:2202.00734"
    params = P.settings(
        {
            "discretise": Param("top_n_sign", str, "how maps become labels", choices=("top_n_sign", "first_n_sign")),
            "n": Param(5, int, "pixels in the label", low=1),
        },
        fill=None,
        output=None,
        absolute=ABS_T,
    )
    spec = P.Perturbation(output="class", base=True)

    def summarise(self, c):
        return stats.agreement(c.base, self._set_pairs(c.m))

    def _labels(self, m):
        """Per map ``[N, ...]`` its discretised label ``[N, L]``."""
        m, k = m.flatten(1), self.hparams["n"]
        if self.hparams["discretise"] == "first_n_sign":
            return m[:, :k].sign().double()
        idx = m.abs().topk(k, dim=1).indices.sort(dim=1).values
        return torch.cat([idx.double(), m.gather(1, idx).sign().double()], 1)

    def set_agreement_blocks(self, read, n, predicted, block):
        """Labels of all maps (``[N, L]``, small), then their equality by blocks."""
        lab = torch.cat([self._labels(read(s, min(n, s + block))) for s in range(0, n, block)])
        return block_agreement(
            predicted, n, block, lambda s, e, s2, e2: (lab[s:e].unsqueeze(1) == lab[s2:e2].unsqueeze(0)).all(-1)
        )

    def _set_pairs(self, m):
        lab = self._labels(m)
        same_label = (lab.unsqueeze(0) == lab.unsqueeze(1)).all(-1)
        same_label &= ~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
        return same_label

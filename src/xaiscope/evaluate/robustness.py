"""Robustness metrics: perturb the input, re-explain with the explainer, compare.

The mechanism (:func:`reexplain`) draws ``nr_samples`` perturbations per image, sends
groups of draws for all images to the explainer together (about ``batch_size`` images
per call; the explainer chunks its own model calls), optionally runs the chunked forward
helper on the same perturbed images (predictions, logits, hidden representations), and
hands each group to a comparison that returns ``[draws, N]`` values; these are reduced
over draws (max or mean, ignoring NaN). Explainer maps are pooled over channels by sum
and get the metric's ``abs``/``normalise`` settings, like the given map ``a``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from xaiscope import models
from xaiscope.evaluate import draws
from xaiscope.evaluate.base import ABS, ABS_T, NORM, NORM_F, Metric, Param, register
from xaiscope.explain.postprocess import pool
from xaiscope.models.forward import iter_chunks

NAN = float("nan")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).double()


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


class _Robustness(Metric):
    category, direction = "robustness", "lower"
    needs = frozenset({"model", "explainer"})
    stochastic = True
    #: what to compute on the perturbed images besides the explanation
    forward_kind: str | None = None

    def _maps(self, a):
        return self.map(a)

    def noise(self, g, shape, device) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reexplain(self, model, x, y, explainer, compare: Callable, k: int) -> torch.Tensor:
        """``[k, N]`` values of ``compare(xp, ap, extra, draw_slice)`` over ``k`` draws."""
        n = x.shape[0]
        per = max(1, self.batch_size // n)
        out = []
        for start in range(0, k, per):
            kk = min(per, k - start)
            noise = torch.stack(
                [
                    self.noise(draws.generator(self.hparams["seed"], x.device, 100 + start + j), x.shape, x.device)
                    for j in range(kk)
                ]
            )
            xp = (x.unsqueeze(0) + noise.to(x.dtype)).reshape(kk * n, *x.shape[1:])
            yp = y.repeat(kk)
            ap = self._maps(pool(explainer(model, xp, yp), "sum"))
            extra = self._forward(model, xp)
            out.append(compare(xp.view(kk, *x.shape), ap.view(kk, n, *ap.shape[1:]), extra, kk))
        return torch.cat(out, 0)

    def _forward(self, model, xp):
        if self.forward_kind is None:
            return None
        return models.forward(model, xp, batch_size=self.batch_size)


class _Sensitivity(_Robustness):
    params = {
        "nr_samples": Param(200, int, "perturbations per image", low=1),
        "lower_bound": Param(0.2, float, "noise radius r: uniform in [-r, r]", low=0.0),
        "abs": ABS,
        "normalise": NORM_F,
    }
    passes_formula = "nr_samples * E"
    reduce = "max"

    def _passes(self, shape, e):
        return self.hparams["nr_samples"] * e

    def noise(self, g, shape, device):
        r = self.hparams["lower_bound"]
        return draws.uniform(g, shape, -r, r, device)

    def _score(self, model, x, y, a, mask, explainer):
        a0 = _flat(self.map(a))
        den = a0.norm(dim=1)
        den = torch.where(
            den > 0, den, torch.full_like(den, NAN)
        )  # relative change of an all-zero map: undefined, not inf

        def compare(xp, ap, extra, kk):
            return (a0.unsqueeze(0) - ap.flatten(2).double()).norm(dim=2) / den

        v = self.reexplain(model, x, y, explainer, compare, self.hparams["nr_samples"])
        return _reduce(v, self.reduce)


def _reduce(v: torch.Tensor, how: str) -> torch.Tensor:
    if how == "max":
        w = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v).amax(0)
        return torch.where(torch.isinf(w) & (w < 0), torch.full_like(w, NAN), w)
    return torch.nanmean(v, 0)


@register
class MaxSensitivity(_Sensitivity):
    """Max-sensitivity: ``max_k ||a(x) - a(x + d_k)||_F / ||a(x)||_F`` with ``d_k`` uniform noise
    in the L-inf ball of radius ``lower_bound``.

    Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS.
    Lower is better; passes = nr_samples * E.
    """

    name = "max_sensitivity"
    reference = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"


@register
class AvgSensitivity(_Sensitivity):
    """Avg-sensitivity: the mean over draws of ``||a(x) - a(x + d_k)||_F / ||a(x)||_F``
    (uniform noise of radius ``lower_bound``).

    Yeh et al. 2019, NeurIPS. Lower is better; passes = nr_samples * E.
    """

    name, reduce = "avg_sensitivity", "mean"
    reference = "Yeh et al. 2019, NeurIPS, arXiv:1901.09392"


@register
class LocalLipschitz(_Robustness):
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
    passes_formula = "nr_samples * E"

    def _passes(self, shape, e):
        return self.hparams["nr_samples"] * e

    def noise(self, g, shape, device):
        return draws.normal(g, shape, self.hparams["perturb_mean"], self.hparams["perturb_std"], device)

    def _score(self, model, x, y, a, mask, explainer):
        a0, x0 = _flat(self.map(a)), _flat(x)

        def compare(xp, ap, extra, kk):
            num = (a0.unsqueeze(0) - ap.flatten(2).double()).norm(dim=2)
            return num / ((x0.unsqueeze(0) - xp.flatten(2).double()).norm(dim=2) + 1e-10)

        return _reduce(self.reexplain(model, x, y, explainer, compare, self.hparams["nr_samples"]), "max")


class _Relative(_Robustness):
    params = {
        "nr_samples": Param(200, int, "perturbations per image", low=1),
        "lower_bound": Param(0.02, float, "noise low (uniform in [low, high])"),
        "upper_bound": Param(0.2, float, "noise high"),
        "eps_min": Param(1e-6, float, "guard against division by zero", low=0.0),
        "nan_when_prediction_changes": Param(True, bool, "ignore draws that change the prediction"),
        "abs": ABS,
        "normalise": NORM_F,
    }
    passes_formula = "1 + nr_samples * (E + 1)"
    forward_kind = "logits"

    def _passes(self, shape, e):
        return 1 + self.hparams["nr_samples"] * (e + 1)

    def noise(self, g, shape, device):
        return draws.uniform(g, shape, self.hparams["lower_bound"], self.hparams["upper_bound"], device)

    def _rel(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        eps = self.hparams["eps_min"]
        return (u - v) / (u + (u == 0) * eps)

    def _den(self, x0, xp, h0, extra) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, model, x, y, a, mask, explainer):
        eps = self.hparams["eps_min"]
        a0, x0 = _flat(self.map(a)), _flat(x)
        base = self._forward(model, x)
        logits0 = base[0] if isinstance(base, tuple) else base
        pred0 = logits0.argmax(1)

        def compare(xp, ap, extra, kk):
            num = self._rel(a0.unsqueeze(0), ap.flatten(2).double()).norm(dim=2)
            den = self._den(x0, xp.flatten(2).double(), base, extra, kk)
            den = den + (den == 0) * eps
            r = num / den
            logits = extra[0] if isinstance(extra, tuple) else extra
            if self.hparams["nan_when_prediction_changes"]:
                changed = logits.argmax(1).view(kk, -1) != pred0.unsqueeze(0)
                r = torch.where(changed, torch.full_like(r, NAN), r)
            return r

        return _reduce(self.reexplain(model, x, y, explainer, compare, self.hparams["nr_samples"]), "max")


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

    name = "relative_input_stability"
    reference = "Agarwal et al. 2022, arXiv:2203.06877"

    def _den(self, x0, xp, base, extra, kk):
        return self._rel(x0.unsqueeze(0), xp).norm(dim=2)


@register
class RelativeOutputStability(_Relative):
    """Relative output stability: ``max_k ||(a - a_k) / a||_F / ||h(x) - h(x_k)||_2`` with ``h``
    the logits; draws that change the prediction are ignored (see relative_input_stability).

    Agarwal et al. 2022, arXiv:2203.06877. Lower is better; passes = 1 + nr_samples * (E + 1).
    """

    name = "relative_output_stability"
    reference = "Agarwal et al. 2022, arXiv:2203.06877"

    def _den(self, x0, xp, base, extra, kk):
        h0 = base.double()
        h = extra.double().view(kk, *h0.shape)
        return (h0.unsqueeze(0) - h).norm(dim=2)


@register
class RelativeRepresentationStability(_Relative):
    """Relative representation stability: ``max_k ||(a - a_k) / a||_F / ||(L(x) - L(x_k)) / L(x)||_2``
    with ``L`` the outputs of every leaf module of the model, concatenated (as Quantus'
    default); draws that change the prediction are ignored.

    Agarwal et al. 2022, arXiv:2203.06877. Lower is better; passes = 1 + nr_samples * (E + 1).
    """

    name = "relative_representation_stability"
    reference = "Agarwal et al. 2022, arXiv:2203.06877"

    def _forward(self, model, xp):
        if self._layers is None:  # the unperturbed images come first
            self._layers = LayerDistance(model, self.batch_size, self.hparams["eps_min"])
            return self._layers.reference(xp), None
        return self._layers.distance(xp)

    def _den(self, x0, xp, base, extra, kk):
        return extra[1].view(kk, -1)

    def _score(self, model, x, y, a, mask, explainer):
        self._layers = None
        try:
            return super()._score(model, x, y, a, mask, explainer)
        finally:
            self._layers = None


@register
class Continuity(_Robustness):
    """Continuity: translate the image horizontally in ``nr_steps`` steps of
    ``(2W + 1) // nr_steps`` pixels from ``-W`` (fill: the image minimum), re-explain, and take
    ``max_s ||a(x) - a(x_s)||_1 / (||x - x_s||_2 + 1e-9)``; both maps come from the explainer.

    Montavon et al. 2018, Digital Signal Processing 73:1-15. Lower is better;
    passes = (nr_steps + 1) * E.
    """

    name, stochastic = "continuity", False
    reference = "Montavon et al. 2018, Digital Signal Processing 73:1-15"
    params = {"nr_steps": Param(28, int, "translations", low=1), "abs": ABS_T, "normalise": NORM}
    passes_formula = "(nr_steps + 1) * E"

    def _passes(self, shape, e):
        return (self.hparams["nr_steps"] + 1) * e

    def _explains_itself(self):
        return True

    def _score(self, model, x, y, a, mask, explainer):
        n, c, h, w = x.shape
        s = self.hparams["nr_steps"]
        dx = (2 * w + 1) // s
        shifts = [-w + dx * (i + 1) for i in range(s)]
        fill = x.flatten(1).amin(1).view(-1, 1, 1, 1)
        cols = torch.arange(w, device=x.device)
        xs = []
        for t in shifts:
            src = cols - t
            ok = (src >= 0) & (src < w)
            shifted = x[..., src.clamp(0, w - 1)]
            xs.append(torch.where(ok.view(1, 1, 1, w), shifted, fill.expand_as(x)))
        xall = torch.cat([x] + xs)
        maps = self.map(pool(explainer(model, xall, y.repeat(s + 1)), "sum")).flatten(1).double()
        a0, ak = maps[:n], maps[n:].view(s, n, -1)
        num = (a0.unsqueeze(0) - ak).abs().sum(-1)
        den = (_flat(x).unsqueeze(0) - torch.stack(xs).flatten(2).double()).norm(dim=2) + 1e-9
        return (num / den).amax(0)


@register
class Consistency(_Robustness):
    """Consistency: among the other images whose maps discretise to the same label, the share
    predicted as the same class (set-level: computed over all images passed together).
    Discretisation ``top_n_sign`` (default, the paper's intent): the positions and signs of the
    ``n`` largest-magnitude pixels; ``first_n_sign``: the signs of the first ``n`` pixels in
    raster order, which is what Quantus 0.6's ``top_n_sign`` computes.

    Dasgupta et al. 2022, "Framework for evaluating faithfulness of local explanations", ICML.
    Higher is better; passes = 1.
    """

    name, direction, stochastic, set_level = "consistency", "higher", False, True
    needs = frozenset({"model"})
    reference = "Dasgupta et al. 2022, ICML, arXiv:2202.00734"
    params = {
        "discretise": Param("top_n_sign", str, "how maps become labels", choices=("top_n_sign", "first_n_sign")),
        "n": Param(5, int, "pixels in the label", low=1),
        "abs": ABS_T,
        "normalise": NORM,
    }
    passes_formula = "1"

    def _passes(self, shape, e):
        return 1

    def _score(self, model, x, y, a, mask, explainer):
        m = self.map(a).flatten(1)
        k = self.hparams["n"]
        if self.hparams["discretise"] == "first_n_sign":
            lab = m[:, :k].sign()
        else:
            idx = m.abs().topk(k, dim=1).indices.sort(dim=1).values
            lab = torch.cat([idx.double(), m.gather(1, idx).sign().double()], 1)
        eq = (lab.unsqueeze(0) == lab.unsqueeze(1)).all(-1)
        eq &= ~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
        pred = models.forward(model, x, batch_size=self.batch_size).argmax(1)
        same = pred.view(1, -1) == pred.view(-1, 1)
        return (same & eq).sum(-1).double() / (eq.sum(-1).double() + 1e-9)

"""Sufficient input subsets (SIS) of one decision and the disjoint SIS collection.

Decision: ``f(x) >= tau``. Backward selection (:mod:`.backselect`) gives the curve
``v_0 = f(x), v_1, ..., v_S`` of ``f`` after each removal; the SIS is the set still
present at the *last* step ``j* = max{j : v_j >= tau}``. By construction it
is sufficient (``f(x_SIS) >= tau``) and, for exact backward selection, 1-minimal: the
step after ``j*`` tried every single removal and the best fell below ``tau``. For
monotone additive ``f`` (sums of non-negative per-unit terms) it is also of minimum
size; for a general network it need not be (Carter et al. 2019 discuss this).

The collection (Carter et al. 2019, Algorithm "SIScollection") finds a SIS, masks it
out of the input, and repeats while the remaining input still reaches ``tau``; the
subsets are disjoint and each is sufficient on its own.

Reference: B. Carter, J. Mueller, S. Jain, D. Gifford, "What made you do this?
Understanding black-box decisions with sufficient input subsets", AISTATS 2019,
arXiv:1810.03805.

Passes (``U`` units available): :func:`find_sis` costs ``U (U + 1) / 2 + 3`` with exact
backward selection (``f`` of the fully masked input, of ``x``, the candidates, and one
re-evaluation of the SIS alone) or ``ceil(U / k) + 4`` with the gradient variant;
:func:`sis_collection` costs ``2 + sum_i (U_i (U_i + 1) / 2 + 2)`` (exact) where ``U_i``
is the number of units left when SIS ``i`` is searched: ``f`` of the fully masked input
once, and per SIS ``f(x_remaining)``, the candidates and the re-evaluation; the final
``+1`` is the ``f(x_remaining) < tau`` that ends it (one more re-evaluation per step
back when batching noise puts a SIS just below ``tau``, which is rare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xaiscope.analyses.sis.backselect import BackselectResult, backselect, evaluate, gradient_backselect
from xaiscope.analyses.units import as_image, as_mask_value, make_units, masked
from xaiscope.errors import ConfigError

METHODS = ("backselect", "gradient")


@dataclass
class SISResult:
    """One sufficient input subset.

    Attributes
    ----------
    mask : BoolTensor ``[H, W]``, the pixels of the SIS
    units : LongTensor, the SIS units, most important (removed last) first
    value : ``f`` of the input reduced to the SIS (re-evaluated alone), ``>= tau``
    tau : the threshold
    image : Tensor ``[C, H, W]``, the input reduced to the SIS (mask value elsewhere)
    step : the backward-selection step ``j*`` at which the SIS was read off
    backselect : the :class:`BackselectResult` it came from
    source, image_id : labels used by clustering (model name, image id)
    """

    mask: torch.Tensor
    units: torch.Tensor
    value: float
    tau: float
    image: torch.Tensor
    step: int
    backselect: BackselectResult
    source: str = ""
    image_id: str = ""

    @property
    def size(self) -> int:
        """Number of units in the SIS."""
        return int(self.units.numel())

    @property
    def n_pixels(self) -> int:
        return int(self.mask.sum())


def check_tau(tau) -> float:
    """``tau`` as a finite float (any real for a general ``f``)."""
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ConfigError(f"tau must be a number, got {tau!r}.") from None
    if not math.isfinite(t):
        raise ConfigError(f"tau must be finite, got {tau!r}.")
    return t


def check_probability_tau(tau) -> float:
    """``tau`` in ``(0, 1]``, as needed when ``f`` is a probability."""
    t = check_tau(tau)
    if not 0.0 < t <= 1.0:
        raise ConfigError(f"tau must lie in (0, 1] when f is a softmax probability, got {tau!r}.")
    return t


def _check_method(method: str, k: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"Unknown selection method {method!r}; choose one of {', '.join(METHODS)}.")


def _refuse_if_empty_sufficient(f, x, mv, base, tau) -> None:
    with torch.no_grad():
        v = float(evaluate(f, masked(x, torch.zeros_like(base), mv)[None])[0])
    if v >= tau:
        raise ConfigError(
            f"The fully masked input already reaches tau={tau:g} (f = {v:.4g}), so the empty set would be sufficient; "
            "raise tau or use another mask value."
        )


def sis_from_backselect(result: BackselectResult, tau: float) -> int | None:
    """The step ``j* = max{j : v_j >= tau}`` of a backward selection, or None when ``f(x) < tau``."""
    curve = result.curve
    if curve[0] < tau:
        return None
    above = (curve >= tau).nonzero().squeeze(1)
    j = int(above[-1])
    if j == curve.numel() - 1:
        raise ConfigError(
            f"The fully masked input already reaches tau={tau:g} (f = {float(curve[-1]):.4g}), so the empty set "
            "would be sufficient; raise tau or use another mask value."
        )
    return j


def _find(f, x, mv, tau, base, *, unit, batch_size, method, k) -> SISResult | None:
    with torch.no_grad():
        units = make_units(unit, x.shape[1], x.shape[2], x.device)
        v0 = float(evaluate(f, masked(x, units.to_pixels(units.from_pixels(base)) & base, mv)[None])[0])
    if v0 < tau:
        return None
    if method == "backselect":
        res = backselect(f, x, mv, unit=unit, batch_size=batch_size, keep=base, initial_value=v0)
    else:
        res = gradient_backselect(f, x, mv, k=k, unit=unit, keep=base, initial_value=v0)
    j = sis_from_backselect(res, tau)
    curve = res.curve
    # Re-evaluate the SIS alone; if batching noise puts it just below tau, step back to
    # the previous step that reaches tau (its set contains this one).
    while True:
        pixels = res.pixels_after(j)
        image = masked(x, pixels, mv)
        with torch.no_grad():
            value = float(evaluate(f, image[None])[0])
        if value >= tau or j == 0:
            break
        earlier = (curve[:j] >= tau).nonzero().squeeze(1)
        j = int(earlier[-1])
    n_removed = 0 if j == 0 else int(res.removed[j - 1])
    sis_units = res.order[n_removed:].flip(0)
    return SISResult(mask=pixels, units=sis_units, value=value, tau=tau, image=image, step=j, backselect=res)


def find_sis(
    f,
    x: torch.Tensor,
    tau: float,
    mask_value=0.0,
    *,
    unit: str = "pixel",
    batch_size: int = 256,
    keep: torch.Tensor | None = None,
    method: str = "backselect",
    k: int = 1,
) -> SISResult | None:
    """One sufficient input subset of the decision ``f(x) >= tau``, or None when ``f(x) < tau``.

    Parameters
    ----------
    f : callable ``[B, C, H, W] -> [B]``
    x : Tensor ``[C, H, W]``
    tau : float, the decision threshold
    mask_value : float or Tensor ``[C, 1, 1]`` / ``[C, H, W]``, default 0.0 (the value of removed pixels)
    unit : ``"pixel"`` or ``"patch:K"``
    batch_size : most candidates per call to ``f``
    keep : BoolTensor ``[H, W]``, optional; pixels outside stay masked and cannot be chosen
    method : ``"backselect"`` (exact, default) or ``"gradient"`` (:func:`gradient_backselect`)
    k : units removed per step by the gradient method

    Raises
    ------
    ConfigError
        When the fully masked input already reaches ``tau``.
    """
    tau = check_tau(tau)
    _check_method(method, k)
    x = as_image(x)
    mv = as_mask_value(mask_value, x)
    base = torch.ones(x.shape[1:], dtype=torch.bool, device=x.device) if keep is None else keep.to(x.device).bool()
    _refuse_if_empty_sufficient(f, x, mv, base, tau)
    return _find(f, x, mv, tau, base, unit=unit, batch_size=batch_size, method=method, k=k)


def sis_collection(
    f,
    x: torch.Tensor,
    tau: float,
    mask_value=0.0,
    *,
    unit: str = "pixel",
    batch_size: int = 256,
    method: str = "backselect",
    k: int = 1,
    max_sis: int | None = None,
) -> list[SISResult]:
    """Disjoint sufficient input subsets: find a SIS, mask it out, repeat while ``f(x_remaining) >= tau``.

    Parameters are those of :func:`find_sis`; ``max_sis`` stops after that many subsets
    (default: no limit). Returns an empty list when ``f(x) < tau``.

    Raises
    ------
    ConfigError
        When the fully masked input already reaches ``tau`` (every input would have the
        empty set as its SIS, so there is nothing to explain).
    """
    tau = check_tau(tau)
    _check_method(method, k)
    if max_sis is not None and (not isinstance(max_sis, int) or max_sis < 1):
        raise ConfigError(f"max_sis must be a positive integer or None, got {max_sis!r}.")
    x = as_image(x)
    mv = as_mask_value(mask_value, x)
    make_units(unit, x.shape[1], x.shape[2])  # validate the unit before any model call
    remaining = torch.ones(x.shape[1:], dtype=torch.bool, device=x.device)
    _refuse_if_empty_sufficient(f, x, mv, remaining, tau)
    out: list[SISResult] = []
    while max_sis is None or len(out) < max_sis:
        sis = _find(f, x, mv, tau, remaining, unit=unit, batch_size=batch_size, method=method, k=k)
        if sis is None:
            break
        out.append(sis)
        remaining = remaining & ~sis.mask
    return out

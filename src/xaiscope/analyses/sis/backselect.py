"""Backward selection (Carter et al. 2019), exact and gradient-guided.

Backward selection starts from the input with every unit present and repeatedly removes
(replaces by the mask value) the one remaining unit whose removal keeps ``f`` highest,
recording the removal order and the value of ``f`` after each removal. The sufficient
input subset is read off this curve (:func:`xaiscope.analyses.sis.find_sis`).

Reference: B. Carter, J. Mueller, S. Jain, D. Gifford, "What made you do this?
Understanding black-box decisions with sufficient input subsets", AISTATS 2019,
arXiv:1810.03805.

Pass counts (one pass = one image through ``f``; ``U`` = units present at the start,
``B`` = ``batch_size``):

====================  ==========================================  =========================
variant               passes                                      model calls per step
====================  ==========================================  =========================
backselect            ``1 + sum_{r=1..U} r = 1 + U (U + 1) / 2``  ``ceil(r / B)`` (``r`` =
                      (the 1 is ``f(x)``; 0 when given)           units left before it)
gradient_backselect   ``ceil(U / k) + 1`` (each step one forward  1
                      with its backward; +1 forward for the
                      empty set)
====================  ==========================================  =========================

For 8x8 digits with pixel units (``U = 64``) backselect costs 2,081 passes; a 64x64
image with 4x4 patches (``U = 256``) costs 32,897; gradient_backselect with ``k = 8``
on a 224x224 image with pixel units (``U = 50,176``) costs 6,273 forward+backward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from xaiscope.analyses.units import Units, as_image, as_mask_value, make_units, masked
from xaiscope.errors import ConfigError, ModelError, NumericalError
from xaiscope.models.forward import iter_chunks

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BackselectResult:
    """The removal order and the curve of ``f`` values of one backward selection.

    Attributes
    ----------
    units : the :class:`Units` of the image
    start : BoolTensor ``[U]``, units present at the start
    order : LongTensor ``[n]``, unit indices in removal order (``n`` = ``start.sum()``)
    values : Tensor ``[S]``, ``f`` after each step (``S = n`` for exact backselect)
    removed : LongTensor ``[S]``, number of units removed after each step
    initial_value : ``f`` with all starting units present (step 0)
    passes, calls : images sent to ``f`` and number of calls to ``f``
    """

    units: Units
    start: torch.Tensor
    order: torch.Tensor
    values: torch.Tensor
    removed: torch.Tensor
    initial_value: float
    base: torch.Tensor
    passes: int = 0
    calls: int = 0

    @property
    def curve(self) -> torch.Tensor:
        """``[S + 1]``: ``f`` before any removal, then after each step."""
        return torch.cat([self.values.new_tensor([self.initial_value]), self.values])

    def present_after(self, step: int) -> torch.Tensor:
        """Unit mask ``[U]`` of the units still present after ``step`` steps (0 = none removed)."""
        n = 0 if step == 0 else int(self.removed[step - 1])
        present = self.start.clone()
        present[self.order[:n]] = False
        return present

    def pixels_after(self, step: int) -> torch.Tensor:
        """Pixel mask ``[H, W]`` still present after ``step`` steps."""
        return self.units.to_pixels(self.present_after(step)) & self.base


def evaluate(f: ScoreFn, xb: torch.Tensor) -> torch.Tensor:
    """``f(xb)`` checked to be a finite vector ``[B]``."""
    out = f(xb)
    if not isinstance(out, torch.Tensor) or out.shape != (xb.shape[0],):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"The score function must map {xb.shape[0]} images to a vector [{xb.shape[0]}], got {shape}.")
    if not torch.isfinite(out).all():
        raise NumericalError("The score function returned NaN or infinite values on masked inputs.")
    return out


def _setup(x, mask_value, unit, keep):
    x = as_image(x)
    mv = as_mask_value(mask_value, x)
    units = make_units(unit, x.shape[1], x.shape[2], x.device)
    if keep is None:
        base = torch.ones(x.shape[1:], dtype=torch.bool, device=x.device)
    else:
        base = torch.as_tensor(keep, dtype=torch.bool, device=x.device)
        if base.shape != x.shape[1:]:
            raise ConfigError(f"The keep mask has shape {list(base.shape)} but the image is {list(x.shape[1:])}.")
    return x, mv, units, base, units.from_pixels(base)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")


def backselect(
    f: ScoreFn,
    x: torch.Tensor,
    mask_value=0.0,
    *,
    unit: str = "pixel",
    batch_size: int = 256,
    keep: torch.Tensor | None = None,
    initial_value: float | None = None,
) -> BackselectResult:
    """Exact backward selection: each step removes the unit whose removal keeps ``f`` highest.

    At step ``t`` with remaining set ``S`` (``r = |S|`` units) every candidate
    ``S \\ {u}`` is scored, in calls of at most ``batch_size`` images, and
    ``u* = argmax_u f(x_{S \\ {u}})`` is removed (ties: the lowest unit index).
    The masked input ``x_S`` is ``x`` on the pixels of ``S`` and ``mask_value`` elsewhere.

    Parameters
    ----------
    f : callable
        Maps a batch ``[B, C, H, W]`` to scores ``[B]`` (e.g. the softmax probability of
        one class). Higher means "more of the decision".
    x : Tensor ``[C, H, W]`` (or ``[1, C, H, W]``)
        The image.
    mask_value : float or Tensor ``[C, 1, 1]`` / ``[C, H, W]``, default 0.0
        The value of removed pixels, e.g. the training mean (``Dataset.fill_value()``).
    unit : ``"pixel"`` (default) or ``"patch:K"``
        Remove single pixels (all channels together) or ``K x K`` patches.
    batch_size : int, default 256
        Most candidates per call to ``f``.
    keep : BoolTensor ``[H, W]``, optional
        Pixels available at the start; the others stay masked throughout (used by the
        SIS collection to exclude earlier SIS). Units with any pixel outside ``keep``
        are not candidates.
    initial_value : float, optional
        ``f`` of the starting input when already known (saves one pass).

    Returns
    -------
    BackselectResult
        ``order`` (removal order), ``values`` (``f`` after each removal), ``initial_value``.

    Passes: ``1 + U (U + 1) / 2`` (``U`` starting units; the 1 is skipped when
    ``initial_value`` is given); calls per step ``ceil(r / batch_size)``.
    """
    _check_batch_size(batch_size)
    x, mv, units, base, present = _setup(x, mask_value, unit, keep)
    passes = calls = 0
    with torch.no_grad():
        if initial_value is None:
            initial_value = float(evaluate(f, masked(x, units.to_pixels(present) & base, mv)[None])[0])
            passes, calls = 1, 1
        n = int(present.sum())
        order = torch.empty(n, dtype=torch.long, device=x.device)
        values = torch.empty(n, dtype=x.dtype, device=x.device)
        for step in range(n):
            cand = present.nonzero().squeeze(1)
            r = cand.numel()
            vals = torch.empty(r, dtype=x.dtype, device=x.device)
            for sl in iter_chunks(r, batch_size):
                m = sl.stop - sl.start
                km = present.expand(m, -1).clone()
                km[torch.arange(m, device=x.device), cand[sl]] = False
                vals[sl] = evaluate(f, masked(x, units.to_pixels(km) & base, mv)).to(x.dtype)
                passes += m
                calls += 1
            best = torch.argmax(vals)
            order[step] = cand[best]
            values[step] = vals[best]
            present[cand[best]] = False
    removed = torch.arange(1, n + 1, device=x.device)
    return BackselectResult(
        units=units,
        start=units.from_pixels(base),
        order=order,
        values=values,
        removed=removed,
        initial_value=float(initial_value),
        base=base,
        passes=passes,
        calls=calls,
    )


def gradient_backselect(
    f: ScoreFn,
    x: torch.Tensor,
    mask_value=0.0,
    *,
    k: int = 1,
    unit: str = "pixel",
    keep: torch.Tensor | None = None,
    initial_value: float | None = None,
) -> BackselectResult:
    """Gradient-guided backward selection: per step remove the ``k`` units whose removal helps ``f`` most to first order.

    With a continuous removal mask ``d in [0, 1]^U`` the input is
    ``x(d) = x + d[labels] * (mask_value - x)`` (``d_u = 1`` removes unit ``u``). Each step
    evaluates ``f`` and ``g = df/dd`` at the current binary mask in one forward+backward
    pass and removes the ``k`` remaining units with the largest ``g_u`` (equivalently the
    smallest gradient with respect to the keep mask ``1 - d``): the first-order estimate
    of the removals that keep ``f`` highest. With ``k = 1`` and a linear ``f`` it
    removes units in the same order as :func:`backselect`.

    Parameters
    ----------
    f : callable, differentiable
        Maps ``[B, C, H, W]`` to ``[B]``.
    x, mask_value, unit, keep, initial_value : as in :func:`backselect`
    k : int, default 1
        Units removed per step.

    Passes: ``ceil(U / k) + 1`` — one forward with its backward per step, plus one
    forward of the fully masked input; one model call per step. ``values`` then has one
    entry per step (``f`` after that step's ``k`` removals) and ``removed`` the
    cumulative number removed.
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (units removed per step) must be a positive integer, got {k!r}.")
    x, mv, units, base, present = _setup(x, mask_value, unit, keep)
    n = int(present.sum())
    if n == 0:
        raise ConfigError("No unit is available for selection: the keep mask removes every unit.")
    steps = math.ceil(n / k)
    order = torch.empty(n, dtype=torch.long, device=x.device)
    values = torch.empty(steps, dtype=x.dtype, device=x.device)
    removed = torch.empty(steps, dtype=torch.long, device=x.device)
    basef = base.to(x.dtype)
    done = passes = 0
    for step in range(steps):
        d = (~present).to(x.dtype).requires_grad_(True)
        with torch.enable_grad():
            keepf = (1 - units.to_pixels(d)) * basef
            val = evaluate(f, (mv + keepf * (x - mv))[None])
            (g,) = torch.autograd.grad(val.sum(), d)
        passes += 1
        if step == 0 and initial_value is None:
            initial_value = float(val.detach()[0])
        elif step > 0:
            values[step - 1] = val.detach()[0]
        m = min(k, n - done)
        score = torch.where(present, g, torch.full_like(g, -torch.inf))
        idx = torch.topk(score, m).indices
        order[done : done + m] = idx
        present[idx] = False
        done += m
        removed[step] = done
    with torch.no_grad():
        values[steps - 1] = evaluate(f, masked(x, units.to_pixels(present) & base, mv)[None])[0]
    passes += 1
    return BackselectResult(
        units=units,
        start=units.from_pixels(base),
        order=order,
        values=values,
        removed=removed,
        initial_value=float(initial_value),
        base=base,
        passes=passes,
        calls=passes,
    )

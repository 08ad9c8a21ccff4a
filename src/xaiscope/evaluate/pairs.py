"""(image, step) pairs through the model, with the readouts shared across metrics.

:func:`run_pairs` is the perturbation mechanism's one model loop: it builds the perturbed
images of the pairs in calls of ``batch_size`` and keeps three readouts per pair
(:func:`readouts`: softmax and logit of the target, predicted class), from which every
metric's ``output`` is picked (:func:`pick`). Inside a
:func:`~xaiscope.evaluate.sharing.shared_passes` block a pair is identified by its image,
its target, the code of the set of pixels it changes (sums of :func:`pixel_codes`, the
steps' ``codes``) and its fill's
key, and a pair already read by another metric is not sent again (see
:mod:`~xaiscope.evaluate.sharing`). No call holds a single image unless ``batch_size`` is 1:
a one-row batch can take another kernel and give other bits, and shared and unshared
scores must be the same.
"""

from __future__ import annotations

import math

import torch

from xaiscope import models
from xaiscope.evaluate import sharing
from xaiscope.models.forward import check_target_range

SOFTMAX, LOGIT, CLASS = 0, 1, 2


def readouts(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` float64: softmax and logit of the target ``y`` and the predicted class."""
    yv = y.view(-1, 1)
    return torch.stack(
        [
            out.softmax(dim=1).gather(1, yv).squeeze(1).double(),
            out.gather(1, yv).squeeze(1).double(),
            out.argmax(1).double(),
        ],
        1,
    )


def pick(r: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """The readout named ``output`` (``softmax``, ``logit``, ``class``, ``correct``: the
    prediction is ``y``) of :func:`readouts` rows ``r``."""
    if output == "correct":
        return (r[:, CLASS] == y.double()).double()
    return r[:, {"softmax": SOFTMAX, "logit": LOGIT, "class": CLASS}[output]]


def chunks(n: int, size: int) -> list[slice]:
    """Slices of at most ``size`` covering ``range(n)``, none of one row when ``size`` >= 2
    (the last two become ``size - 1`` and 2)."""
    size = max(1, int(size))
    out = [slice(s, min(n, s + size)) for s in range(0, n, size)]
    if size >= 2 and len(out) >= 2 and out[-1].stop - out[-1].start == 1:
        out[-2:] = [slice(out[-2].start, out[-2].stop - 1), slice(out[-2].stop - 1, n)]
    return out


def pixel_codes(p: int, device) -> torch.Tensor:
    """``[P, 2]`` fixed random codes of the ``P`` pixels (voxels), below ``2^62 / P`` so any sum
    of them fits in int64."""
    bits = min(48, 62 - math.ceil(math.log2(p + 1)))
    g = torch.Generator().manual_seed(1_000_003)
    return torch.randint(0, 2**bits, (p, 2), generator=g, dtype=torch.long).to(device)


def pair_images(p: torch.Tensor, nb: int, T: int) -> torch.Tensor:
    """The image of each pair ``p``: ``p + nb`` for an unperturbed one (``p < 0``), else ``p // T``."""
    return torch.where(p < 0, p + nb, p // max(1, T))


def pair_inputs(x, y, steps, fill, insertion: bool, p: torch.Tensor, nb: int):
    """Images and targets of pairs ``p`` (``p < 0``: image ``p + nb`` unperturbed; else image
    ``p // T`` after step ``p % T``)."""
    base = p < 0
    xb = torch.empty((p.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
    n_idx = pair_images(p, nb, steps.T)
    if bool(base.any()):
        xb[base] = x[n_idx[base]]
    if not bool(base.all()):
        q = p[~base]
        ni, ti = q // steps.T, q % steps.T
        xi = x[ni]
        mb = steps.mask(ni, ti).view(-1, 1, *x.shape[2:])
        fb = fill(xi, mb, ni, ti)
        xb[~base] = torch.where(mb, xi, fb) if insertion else torch.where(mb, fb, xi)
    return xb, y[n_idx]


_MIX = (0x9E3779B97F4A7C15 - 2**64, 0xC2B2AE3D27D4EB4F - 2**64, 0x165667B19E3779F9, 0x27D4EB2F165667C5, 0x85EBCA77)


def _keys(scope, x, y, steps, fill, insertion: bool, pairs: torch.Tensor, nb: int) -> torch.Tensor | None:
    """One int64 identity per pair, mixing its image, target, fill (none for an unchanged
    image) and set code (wrapping products; two pairs collide with probability about
    ``M^2 / 2^64`` for ``M`` pairs); None where the fill or the steps cannot be shared."""
    fill_key = getattr(fill, "key", None)
    if fill_key is None:
        return None
    n = x.shape[0]
    base = pairs < 0
    if bool(base.all()):
        c = torch.zeros(pairs.numel(), 2, dtype=torch.long, device=x.device)
    else:
        if not hasattr(steps, "codes"):  # steps that cannot code their pixel sets share nothing
            return None
        h = pixel_codes(x[0, 0].numel(), x.device)
        c = torch.where(base.view(-1, 1), 0, steps.codes(h).reshape(-1, 2)[pairs.clamp(min=0)])
        if insertion:  # the image shows at the mask: the fill covers the rest
            c = torch.where(base.view(-1, 1), c, h.sum(0) - c)
    fills = scope.memo.setdefault(("fills",), {})
    fid = torch.where((c == 0).all(1), 0, fills.setdefault(fill_key, len(fills) + 1))
    n_idx = pair_images(pairs, nb, steps.T).clamp(0, n - 1)
    parts = (c[:, 0], c[:, 1], fid, n_idx, y[n_idx])
    return sum(p.long() * m for p, m in zip(parts, _MIX))


def run_pairs(model, x, y, steps, fill, pairs: torch.Tensor, nb: int, *, batch_size: int, insertion: bool):
    """Readouts ``[len(pairs), 3]`` (:func:`readouts`) of ``pairs`` (see :func:`pair_inputs`),
    sent to the model ``batch_size`` at a time; pairs another metric of the current
    :func:`~xaiscope.evaluate.sharing.shared_passes` block has read are taken from it (a
    sorted table of pair identities and their readouts, 32 bytes a pair)."""
    scope = sharing.current()
    keys = None if scope is None else _keys(scope, x, y, steps, fill, insertion, pairs, nb)
    if scope is not None and scope.dry and keys is None:
        _build_only(x, y, steps, fill, insertion, pairs, nb, batch_size)
        return torch.full((pairs.numel(), 3), float("nan"), dtype=torch.float64, device=x.device)
    if keys is None:
        out = torch.empty(pairs.numel(), 3, dtype=torch.float64, device=x.device)
        for j, sl in enumerate(chunks(pairs.numel(), batch_size)):
            out[sl] = _read(model, x, y, steps, fill, insertion, pairs[sl], nb, first=j == 0, pad=batch_size >= 2)
        return out
    table = scope.table("pairs", model, x)
    known = table.get("keys", torch.empty(0, dtype=torch.long, device=x.device))
    values = table.get("values", torch.empty(0, 3, dtype=torch.float64, device=x.device))
    uniq, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((uniq.numel(),), keys.numel(), dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel(), device=x.device), "amin")
    at = torch.searchsorted(known, uniq).clamp(max=max(0, known.numel() - 1))
    seen = known[at] == uniq if known.numel() else torch.zeros_like(uniq, dtype=torch.bool)
    todo = first[~seen]  # positions in ``pairs`` of the unseen identities, first occurrence
    scope.saved += keys.numel() - todo.numel()
    new = torch.full((todo.numel(), 3), float("nan"), dtype=torch.float64, device=x.device)
    if scope.dry:
        _build_only(x, y, steps, fill, insertion, pairs[todo], nb, batch_size)
    for j, sl in enumerate([] if scope.dry else chunks(todo.numel(), batch_size)):
        new[sl] = _read(model, x, y, steps, fill, insertion, pairs[todo[sl]], nb, first=j == 0, pad=batch_size >= 2)
    known, order = torch.cat([known, keys[todo]]).sort()
    values = torch.cat([values, new])[order]
    table["keys"], table["values"] = known, values
    return values[torch.searchsorted(known, keys)]


def _build_only(x, y, steps, fill, insertion, p, nb, batch_size: int) -> None:
    """Build the perturbed images of pairs ``p`` without sending them to the model: a dry
    block's timing of the work besides the model (masks, fills, imputation)."""
    for sl in chunks(p.numel(), batch_size):
        pair_inputs(x, y, steps, fill, insertion, p[sl], nb)


def _read(model, x, y, steps, fill, insertion, p, nb, *, first: bool, pad: bool) -> torch.Tensor:
    """Readouts of one call's pairs ``p``; with ``pad`` a lone pair goes with a copy of itself."""
    xb, yb = pair_inputs(x, y, steps, fill, insertion, p, nb)
    lone = pad and xb.shape[0] == 1
    if lone:
        xb, yb = xb.expand(2, *xb.shape[1:]), yb.expand(2)
    out = models.forward(model, xb, batch_size=xb.shape[0])
    if first:  # once per run: readouts that compare with y (ROAD) do not index by it
        check_target_range(y, out.shape[1])
    r = readouts(out, yb)
    return r[:1] if lone else r

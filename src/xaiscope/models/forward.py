"""The one chunked forward helper every model call goes through.

Memory is bounded by ``batch_size`` (images per model call) and the number of images
that reach the model can be counted with :func:`count_passes`, so the cost of any
explanation or metric can be checked against its floor (passes x one batched pass).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from xaiscope.errors import ModelError

DEFAULT_BATCH_SIZE = 256


def check_output(out, n: int) -> torch.Tensor:
    """Return ``out`` if it is a float tensor ``[n, classes]``, else raise :class:`ModelError`."""
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"The model must return a tensor [N, classes], but it returned a {type(out).__name__}.")
    if out.dim() != 2 or out.shape[0] != n:
        raise ModelError(
            f"The model must return a tensor [N, classes], but for {n} images it returned shape {list(out.shape)}."
        )
    return out


def check_targets(y: torch.Tensor) -> None:
    """Targets must be class indices >= 0 (the upper bound is checked by :func:`friendly_model_errors`)."""
    if y.numel() and int(y.min()) < 0:
        raise ModelError(f"Targets must be class indices 0, 1, ...; got {int(y.min())}.")


def check_target_range(y: torch.Tensor, n_classes: int) -> None:
    """Raise the same sentence as :func:`friendly_model_errors` for targets ``>= n_classes``
    (for code that compares predictions with targets instead of indexing the outputs)."""
    if y.numel() and int(y.max()) >= n_classes:
        raise ModelError(f"Target class {int(y.max())} is beyond the model's outputs ({n_classes} classes).")


@contextlib.contextmanager
def friendly_model_errors(x: torch.Tensor, y: torch.Tensor | None = None) -> Iterator[None]:
    """Turn the usual mismatches between a model and its inputs into one clear sentence:
    images of the wrong channel count or size, and target classes beyond the outputs."""
    try:
        yield
    except (RuntimeError, IndexError) as e:
        msg = str(e)
        first = msg.splitlines()[0] if msg else type(e).__name__
        size = "x".join(str(s) for s in x.shape[2:])  # HxW, or DxHxW for volumes
        if "channels" in msg and ("expected input" in msg or "Given groups" in msg):
            raise ModelError(
                f"The model does not accept images with {x.shape[1]} channel(s) of size {size}: {first}"
            ) from None
        if "mat1 and mat2 shapes cannot be multiplied" in msg:
            raise ModelError(f"The model does not accept images of size {size}: {first}") from None
        if y is not None and y.numel() and f"index {int(y.max())} is out of bounds" in msg:
            raise ModelError(f"Target class {int(y.max())} is beyond the model's outputs ({first}).") from None
        raise


def forward(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    grad: bool = False,
) -> torch.Tensor:
    """Outputs ``[N, classes]`` of ``model`` on ``x`` computed ``batch_size`` images at a time.

    Parameters
    ----------
    model : callable
        Maps ``[B, C, H, W]`` to ``[B, classes]``.
    x : Tensor ``[N, C, H, W]``
        Inputs, on the model's device.
    batch_size : int, default 256
        Most images sent to the model in one call.
    grad : bool, default False
        Keep the autograd graph (for gradients of the outputs).
    """
    if batch_size < 1:
        raise ModelError(f"batch_size must be at least 1, got {batch_size}.")
    n = x.shape[0]
    if n == 0:
        raise ModelError("No images were given to the model.")
    outs = []
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            outs.append(check_output(model(xb), xb.shape[0]))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def scores(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output: str = "softmax",
) -> torch.Tensor:
    """Target-class scores ``f_y(x)`` ``[N]``: softmax probability (default) or logit."""
    out = forward(model, x, batch_size=batch_size)
    if output == "softmax":
        out = out.softmax(dim=1)
    elif output != "logit":
        raise ModelError(f"output must be 'softmax' or 'logit', got {output!r}.")
    return out.gather(1, y.view(-1, 1).to(out.device)).squeeze(1)


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices ``[start, start+size)`` covering ``range(n)``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass
class PassCount:
    """Images seen by a model (``rows``) and number of calls (``calls``)."""

    rows: int = 0
    calls: int = 0
    largest_call: int = 0


@contextlib.contextmanager
def count_passes(model: torch.nn.Module) -> Iterator[PassCount]:
    """Count the images (rows) and calls that reach ``model`` inside the block.

    A backward pass is not counted separately: one "pass" is one image through the
    model, with or without the backward that follows it.
    """
    count = PassCount()

    def hook(_module, args):
        rows = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else 0
        count.rows += rows
        count.calls += 1
        count.largest_call = max(count.largest_call, rows)

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()

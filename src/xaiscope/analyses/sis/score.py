"""Score functions ``f: [B, C, H, W] -> [B]`` built from a classifier."""

from __future__ import annotations

import torch

from xaiscope.errors import ConfigError
from xaiscope.models.forward import DEFAULT_BATCH_SIZE, forward


def class_score(model, target: int, *, output: str = "softmax", batch_size: int = DEFAULT_BATCH_SIZE):
    """``f(x) = softmax(model(x))[:, target]`` (or the logit), through the chunked forward helper.

    Gradients flow when autograd is enabled by the caller (as in
    :func:`~xaiscope.analyses.sis.gradient_backselect`); otherwise no graph is kept.
    """
    if output not in ("softmax", "logit"):
        raise ConfigError(f"output must be 'softmax' or 'logit', got {output!r}.")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ConfigError(f"The class must be a non-negative integer, got {target!r}.")

    def f(x: torch.Tensor) -> torch.Tensor:
        out = forward(model, x, batch_size=batch_size, grad=torch.is_grad_enabled())
        if target >= out.shape[1]:
            raise ConfigError(
                f"Class {target} is out of range: the model has {out.shape[1]} outputs (classes 0..{out.shape[1] - 1})."
            )
        if output == "softmax":
            out = out.softmax(dim=1)
        return out[:, target]

    f.target = target  # type: ignore[attr-defined]
    f.output = output  # type: ignore[attr-defined]
    return f

"""Context managers that leave a user's model exactly as it was found."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module, requires_grad: bool = False) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode (parameters' ``requires_grad`` set to ``requires_grad``).

    Train/eval mode of every submodule and every parameter's ``requires_grad`` flag are
    restored on exit, also when an exception is raised.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(requires_grad)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")

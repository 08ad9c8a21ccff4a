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
    # only what changes is touched (and restored): cheap for a model already in eval mode
    training = [m for m in model.modules() if m.training]
    flags = [p for p in model.parameters() if p.requires_grad != requires_grad]
    try:
        if training:
            model.eval()
        for p in flags:
            p.requires_grad_(requires_grad)
        yield model
    finally:
        for m in training:
            m.training = True
        for p in flags:
            p.requires_grad_(not requires_grad)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")

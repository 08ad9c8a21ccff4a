"""Model factories used as ``package.module:factory`` specs in tests."""

from __future__ import annotations

import torch
from torch import nn

from xaiscope.models import build


def rgb_only(num_classes: int = 2) -> nn.Module:
    """A small CNN that always expects 3 channels, whatever the data has."""
    return build("small_cnn", in_channels=3, num_classes=num_classes, width=4)


class _TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = build("small_cnn", width=4)

    def forward(self, x):
        out = self.net(x)
        return out, out


def tuple_output() -> nn.Module:
    return _TupleOut()


def scalar_output() -> nn.Module:
    net = build("small_cnn", width=4)
    return nn.Sequential(net, nn.Flatten(0))


def single_output() -> nn.Module:
    """One output unit: labels >= 1 are out of range."""
    return build("small_cnn", width=4, num_classes=1)


def nan_for_bright_images() -> nn.Module:
    class NanModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build("small_cnn", width=4)

        def forward(self, x):
            out = self.net(x)
            bright = x.flatten(1).mean(1) > 0.6
            return torch.where(bright[:, None], torch.full_like(out, float("nan")), out)

    return NanModel()


class _CrashOnce(nn.Module):
    """Kills its own process the first time it runs inside a Ray worker (marker file in
    ``XAISCOPE_CRASH_MARKER``); the driver (``XAISCOPE_DRIVER_PID``) is never killed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = build("small_cnn", width=4)

    def forward(self, x):
        import os
        from pathlib import Path

        marker = os.environ.get("XAISCOPE_CRASH_MARKER")
        if marker and str(os.getpid()) != os.environ.get("XAISCOPE_DRIVER_PID") and not Path(marker).exists():
            Path(marker).write_text("crashed")
            os._exit(1)
        return self.net(x)


def crash_once() -> nn.Module:
    return _CrashOnce()


def seeded_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build("small_cnn", width=4)


def conv3d(
    num_classes: int = 2,
    in_channels: int = 1,
    widths: tuple[int, int] = (4, 8),
    activation: type[nn.Module] = nn.ReLU,
    seed: int | None = None,
) -> nn.Module:
    """A tiny volume classifier in eval mode: Conv3d-act-MaxPool3d-Conv3d-act, global average
    pooling, linear; the last Conv3d (index 3) gives maps of half the input's size. ``seed``
    seeds torch's global generator before the weights are drawn."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(in_channels, widths[0], 3, padding=1),
        activation(),
        nn.MaxPool3d(2),
        nn.Conv3d(widths[0], widths[1], 3, padding=1),
        activation(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(widths[1], num_classes),
    ).eval()

"""Shared fixtures: small random-weight models and small synthetic images."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from xaiscope.models import build  # noqa: E402


@pytest.fixture
def gray_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=g)
    y = torch.tensor([0, 1, 0, 1])
    return x, y


@pytest.fixture
def rgb_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 2])
    return x, y


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return build("small_cnn", in_channels=1, num_classes=2, width=8).eval()

"""A small zoo of CNNs for tests, the demo and the benchmark studies.

Every zoo model ends in global average pooling + one linear layer, so class activation
mapping (CAM) applies. ``small_cnn3d`` is ``small_cnn`` for volumes ``[N, C, D, H, W]``.
``small_vgg`` has BatchNorm and four blocks (``features[0..3]``) that the transfer study
freezes. ``small_resnet`` is a torchvision ``ResNet`` of ``BasicBlock`` s, so Zennit's
``ResNetCanonizer`` applies.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

#: convolution, max pooling and global average pooling of images (2) and volumes (3)
_LAYERS = {2: (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d), 3: (nn.Conv3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)}


class SmallCNN(nn.Module):
    """conv-relu-pool x2, conv-relu, global average pooling, linear (2D layers; ``dims = 3`` in
    :class:`SmallCNN3d`)."""

    dims = 2

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16):
        super().__init__()
        conv, pool, gap = _LAYERS[self.dims]
        w = width
        self.features = nn.Sequential(
            conv(in_channels, w, 3, padding=1),
            nn.ReLU(),
            pool(2),
            conv(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            pool(2),
            conv(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = gap(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class SmallCNN3d(SmallCNN):
    """The volume version of :class:`SmallCNN`: conv3d-relu-pool x2, conv3d-relu, global average
    pooling, linear. Input ``[N, C, D, H, W]``; the same attribute names, so CAMs find the last
    ``Conv3d`` in ``features``."""

    dims = 3

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 8):
        super().__init__(in_channels, num_classes, width)


def _vgg_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))


class SmallVGG(nn.Module):
    """Four conv-BN-relu-pool blocks (``features[0..3]``), global average pooling and a
    linear layer (the VGG-GAP variant of Zhou et al. 2016)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16):
        super().__init__()
        w = width
        chans = [in_channels, w, 2 * w, 4 * w, 4 * w]
        self.features = nn.Sequential(*[_vgg_block(chans[i], chans[i + 1]) for i in range(4)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def small_cnn(in_channels: int = 1, num_classes: int = 2, width: int = 16) -> nn.Module:
    return SmallCNN(in_channels, num_classes, width)


def small_cnn3d(in_channels: int = 1, num_classes: int = 2, width: int = 8) -> nn.Module:
    """:class:`SmallCNN3d` for volumes ``[N, C, D, H, W]`` (e.g. the 3D lesion benchmark)."""
    return SmallCNN3d(in_channels, num_classes, width)


def small_vgg(in_channels: int = 1, num_classes: int = 2, width: int = 16) -> nn.Module:
    return SmallVGG(in_channels, num_classes, width)


def small_resnet(in_channels: int = 1, num_classes: int = 2, width: int = 16) -> nn.Module:
    """A torchvision ResNet with one BasicBlock per stage, sized for small images."""
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes, width_per_group=64)
    # Narrow it: rebuild with the requested width.
    model.inplanes = width
    model.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    model.layer1 = model._make_layer(BasicBlock, width, 1)
    model.layer2 = model._make_layer(BasicBlock, 2 * width, 1, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * width, 1, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 4 * width, 1, stride=2)
    model.fc = nn.Linear(4 * width, num_classes)
    return model


ZOO: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "small_vgg": small_vgg,
    "small_resnet": small_resnet,
    "small_cnn3d": small_cnn3d,
}


def build(arch: str, **kwargs) -> nn.Module:
    """Build a zoo model by name (``small_cnn``, ``small_vgg``, ``small_resnet``, ``small_cnn3d``)."""
    from xaiscope.errors import ModelError, did_you_mean

    if arch not in ZOO:
        raise ModelError(f"Unknown architecture {arch!r}{did_you_mean(arch, ZOO)}; choose one of {', '.join(ZOO)}.")
    return ZOO[arch](**kwargs)

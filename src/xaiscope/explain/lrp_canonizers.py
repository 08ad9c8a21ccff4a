"""Zennit canonizers xaiscope adds: residual blocks of torchvision's video ResNets.

Zennit's ``ResNetCanonizer`` matches the 2D ``torchvision.models.resnet`` blocks only. The
blocks of ``torchvision.models.video`` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``) add their
shortcut in place (``out += residual``), an operation LRP rules cannot see, so relevance
would pass through both branches whole instead of being split between them. The canonizer
here gives each block a forward that adds through Zennit's ``Sum`` module, whose rule
splits the relevance in proportion to each branch's contribution ``z_b / (z_1 + z_2)``
(Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10), and merges every batch norm into
the convolution before it (``SequentialMergeBatchNorm``: the blocks keep convolution and
batch norm together in ``nn.Sequential``).
"""

from __future__ import annotations

import torch
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.layer import Sum


class VideoResNetBlockCanonizer(AttributeCanonizer):
    """Replaces the forward of ``torchvision.models.video.resnet`` ``BasicBlock`` and
    ``Bottleneck`` by one that adds the shortcut through a ``Sum`` module."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        from torchvision.models.video.resnet import BasicBlock, Bottleneck

        if isinstance(module, (BasicBlock, Bottleneck)):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        if hasattr(self, "conv3"):
            out = self.conv3(out)
        out = self.canonizer_sum(torch.stack([residual, out], dim=-1))
        return self.relu(out)


class VideoResNetCanonizer(CompositeCanonizer):
    """Batch norm merged into the preceding convolutions, shortcuts added through ``Sum``."""

    def __init__(self) -> None:
        super().__init__((SequentialMergeBatchNorm(), VideoResNetBlockCanonizer()))

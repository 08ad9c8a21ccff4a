"""Find the layer a CAM-family method explains."""

from __future__ import annotations

from torch import nn

from xaiscope.errors import MethodError, did_you_mean


def find_layer(model: nn.Module, name: str, method: str) -> tuple[str, nn.Module]:
    """``(name, module)``: the module called ``name``, or the last ``Conv2d`` for ``"auto"``."""
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules or name == "":
            raise MethodError(f"The model has no layer {name!r} for {method}{did_you_mean(name, [m for m in modules if m])}.")
        return name, modules[name]
    convs = [(n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MethodError(f"{method} needs a model with a Conv2d layer, and this model has none; pass layer=NAME to choose one.")
    return convs[-1]


def find_gap_head(model: nn.Module, method: str) -> tuple[nn.Module, nn.Linear]:
    """The global pooling module and the final linear layer of a GAP + linear head."""
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not pools or not linears:
        raise MethodError(f"{method} needs a model that ends in global average pooling and one linear layer.")
    return pools[-1], linears[-1]

"""Find the layer a CAM-family method explains."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaiscope.errors import MethodError, did_you_mean


def find_layer(model: nn.Module, name: str, method: str) -> tuple[str, nn.Module]:
    """``(name, module)``: the module called ``name``, or the last ``Conv2d`` for ``"auto"``."""
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules or name == "":
            raise MethodError(
                f"The model has no layer {name!r} for {method}{did_you_mean(name, [m for m in modules if m])}."
            )
        return name, modules[name]
    convs = [(n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MethodError(
            f"{method} needs a model with a Conv2d layer, and this model has none; pass layer=NAME to choose one."
        )
    return convs[-1]


def _is_global_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    one = (1, (1, 1), [1, 1])
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in one
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in one
    if (node.op == "call_function" and node.target is torch.mean) or (
        node.op == "call_method" and node.target == "mean"
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dims in ((2, 3), (-2, -1), [2, 3], [-2, -1])
    return False


def gap_features_model(model: nn.Module, method: str) -> tuple[nn.Module, nn.Linear]:
    """``(g, linear)``: ``g(x)`` returns ``(model(x), A)`` with ``A`` the feature maps that enter
    the last global average pooling, and ``linear`` the final linear layer.

    The model is traced with ``torch.fx`` so functional pooling (DenseNet) is found too.
    """
    msg = f"{method} needs a model that ends in global average pooling and one linear layer; use gradcam instead."
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        raise MethodError(msg + " (the model cannot be traced)") from None
    pools = [n for n in gm.graph.nodes if _is_global_pool(gm, n)]
    if not pools or not linears:
        raise MethodError(msg)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    result = out.args[0]
    gm.graph.erase_node(out)
    gm.graph.output((result, pools[-1].args[0]))
    gm.recompile()
    return gm, linears[-1]

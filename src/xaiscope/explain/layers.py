"""Find the layer a CAM-family method explains."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaiscope.errors import MethodError, did_you_mean


def find_layer(model: nn.Module, name: str, method: str) -> tuple[str, nn.Module]:
    """``(name, module)``: the module called ``name``; for ``"auto"`` the first normalisation
    of the last attention block of a vision transformer (where its tokens still map to
    patches), else the last ``Conv2d`` or ``Conv3d`` (for volumes)."""
    modules = dict(model.named_modules())
    if any(isinstance(m, torch.jit.ScriptModule) for m in modules.values()):
        raise MethodError(
            f"{method} reads a layer inside the model, and the layers of a TorchScript program cannot be "
            "hooked; load the model as a module (weights with their sidecar, or a factory spec) to use it."
        )
    if name != "auto":
        if name not in modules or name == "":
            raise MethodError(
                f"The model has no layer {name!r} for {method}{did_you_mean(name, [m for m in modules if m])}."
            )
        return name, modules[name]
    vit = _vit_auto_layer(model, modules)
    if vit is not None:
        return vit
    convs = [(n, m) for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise MethodError(
            f"{method} needs a model with a Conv2d or Conv3d layer, and this model has none; "
            "pass layer=NAME to choose one."
        )
    return convs[-1]


def _declared_channels(m: nn.Module) -> int | None:
    """The output channels a module declares: ``out_channels`` (convolutions), ``num_features``
    (batch norm), ``num_channels`` (group norm), ``normalized_shape[-1]`` (layer norm),
    ``out_features`` (linear); None for modules that declare none (activations, pooling)."""
    for attr in ("out_channels", "num_features", "num_channels", "out_features"):
        k = getattr(m, attr, None)
        if isinstance(k, int):
            return k
    shape = getattr(m, "normalized_shape", None)
    return int(shape[-1]) if isinstance(shape, (tuple, list)) and shape else None


def layer_channels(model: nn.Module, name: str, method: str) -> float:
    """``K``, the channels of the layer :func:`find_layer` chooses, read from the modules'
    declarations without running the model: the layer's own (a convolution or normalisation),
    else its last submodule that declares one (a block), else the module registered before
    it (an activation or pooling after a convolution); NaN where none says."""
    _, layer = find_layer(model, name, method)
    for m in (layer, *reversed(list(layer.modules())[1:])):
        k = _declared_channels(m)
        if k is not None:
            return float(k)
    before = []
    for m in model.modules():
        if m is layer:
            break
        before.append(m)
    for m in reversed(before):
        k = _declared_channels(m)
        if k is not None:
            return float(k)
    return float("nan")


def channel_dim(a: torch.Tensor, model: nn.Module) -> int:
    """The dimension of a layer's output that holds its channels: the last for vision-transformer
    tokens ``[N, T, K]`` and channels-last maps (``output_fmt`` ``NHWC``), else 1."""
    if a.dim() == 3 or (a.dim() == 4 and getattr(model, "output_fmt", None) == "NHWC"):
        return a.dim() - 1
    return 1


def _is_global_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A global average pooling over the 2 (images) or 3 (volumes) spatial dims."""
    one = (1, (1, 1), [1, 1], (1, 1, 1), [1, 1, 1])
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)) and mod.output_size in one
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in one
    if (node.op == "call_function" and node.target is torch.mean) or (
        node.op == "call_method" and node.target == "mean"
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        spatial = ((2, 3), (-2, -1), (2, 3, 4), (-3, -2, -1))
        return isinstance(dims, (tuple, list)) and tuple(dims) in spatial
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


def _vit_auto_layer(model: nn.Module, modules: dict) -> tuple[str, nn.Module] | None:
    """``blocks.<last>.norm1`` of a timm vision transformer with a patch grid, else None."""
    if getattr(getattr(model, "patch_embed", None), "grid_size", None) is None:
        return None
    blocks = [n for n, m in modules.items() if hasattr(m, "attn") and hasattr(m, "norm1") and hasattr(m.attn, "qkv")]
    if not blocks:
        return None
    return f"{blocks[-1]}.norm1", modules[f"{blocks[-1]}.norm1"]


def to_channels_first(a: torch.Tensor, model: nn.Module, method: str) -> torch.Tensor:
    """A layer's activations (or their gradients) as ``[N, C, h, w]``: channels-first maps as
    they are (CNNs, ConvNeXt) and so are volumes ``[N, C, d, h, w]`` (3D CNNs); channels-last
    maps of models whose ``output_fmt`` is ``NHWC`` (Swin) permuted; vision-transformer tokens
    ``[N, T, C]`` with the prefix (class and register) tokens dropped and the patches laid on
    the model's grid."""
    if a.dim() == 5:
        return a
    if a.dim() == 4:
        return a.permute(0, 3, 1, 2) if getattr(model, "output_fmt", None) == "NHWC" else a
    if a.dim() == 3:
        from xaiscope.explain.attention import token_layout

        layout = token_layout(model, method)
        h, w = layout.grid
        tokens = a[:, layout.prefix :]
        if tokens.shape[1] != h * w:
            raise MethodError(
                f"{method}: the layer gives {a.shape[1]} tokens, not the {layout.prefix} prefix tokens and {h}x{w} patches."
            )
        return tokens.reshape(a.shape[0], h, w, a.shape[2]).permute(0, 3, 1, 2)
    raise MethodError(
        f"{method} needs a layer with spatial output ([N, K, h, w] maps, [N, K, d, h, w] volumes or [N, T, K] tokens); "
        f"this layer gives {a.dim()} dimensions."
    )

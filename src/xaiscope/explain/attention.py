"""Attention-based explanations of vision transformers (timm models).

The token layout comes from the model, never from constants: the attention modules are
the modules with ``qkv``, ``num_heads`` and ``attn_drop`` (timm's ``Attention``), in the
order they run; the patch grid is ``patch_embed.grid_size``; the first
``num_prefix_tokens`` tokens are the class and register tokens.

**Attention rollout** (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers",
ACL, arXiv:2005.00928). Per layer ``l`` the attention probabilities ``A_l`` ``[heads, T, T]``
are fused over heads (``head_fusion``: mean, max or min), the smallest ``discard_ratio``
of the fused entries are set to zero (never the class token's attention to itself),
the identity is added for the residual path and each row renormalised:
``Â_l = norm_rows(fuse(A_l) + I)``; the layers are multiplied,
``R = Â_L ... Â_2 Â_1``. The map is the class token's row of ``R`` over the patch tokens,
reshaped to the patch grid and upsampled bilinearly to the image; a model without a class
token (global average pooling) gets the mean of the patch tokens' rows over the patches.
Rollout does not depend on the class explained. Passes: 1 forward per image.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xaiscope.errors import MethodError
from xaiscope.explain.base import Explainer, Param, register
from xaiscope.explain.chunking import per_chunk
from xaiscope.models.forward import check_target_range


@dataclass(frozen=True)
class TokenLayout:
    """Where a vision transformer keeps its tokens: its attention modules in order, the patch
    grid ``(h, w)``, the number of prefix (class and register) tokens, and whether the class
    token is what the head reads (else the patch tokens are pooled)."""

    attentions: tuple[torch.nn.Module, ...]
    grid: tuple[int, int]
    prefix: int
    class_token: bool


def token_layout(model: torch.nn.Module, method: str = "this method") -> TokenLayout:
    """The :class:`TokenLayout` of a timm vision transformer; one sentence for other models."""
    attentions = tuple(
        m for m in model.modules() if all(hasattr(m, a) for a in ("qkv", "num_heads", "attn_drop", "fused_attn"))
    )
    embed = getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if not attentions or grid is None:
        raise MethodError(
            f"{method} explains vision transformers (timm models with attention blocks and a patch grid); "
            "this model has none."
        )
    prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    class_token = getattr(model, "cls_token", None) is not None and getattr(model, "global_pool", "token") == "token"
    return TokenLayout(attentions, (int(grid[0]), int(grid[1])), prefix, class_token)


@contextlib.contextmanager
def captured_attention(layout: TokenLayout):
    """Within the block, every attention module computes its probabilities explicitly (fused
    kernels off) and the list yielded receives them, ``[B, heads, T, T]`` per module in order."""
    store: list[torch.Tensor] = []
    handles, fused = [], []
    for m in layout.attentions:
        fused.append(m.fused_attn)
        m.fused_attn = False
        handles.append(m.attn_drop.register_forward_hook(lambda _m, args, _out: store.append(args[0].detach())))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for m, f in zip(layout.attentions, fused):
            m.fused_attn = f


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """``R = Â_L ... Â_1`` ``[B, T, T]`` of per-layer attention ``[B, heads, T, T]`` (module docstring)."""
    result = None
    for a in attentions:
        a = a.double()
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
        if discard_ratio > 0:
            flat = fused.flatten(1).clone()
            k = int(flat.shape[1] * discard_ratio)
            if k:
                flat.scatter_(1, flat.topk(k, dim=1, largest=False).indices, 0.0)
                flat[:, 0] = fused.flatten(1)[:, 0]  # the class token's attention to itself is kept
            fused = flat.view_as(fused)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = fused + eye
        step = step / step.sum(-1, keepdim=True)
        result = step if result is None else step @ result
    return result


def token_map(r: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Patch-grid maps ``[B, 1, h, w]`` from the rollout ``R`` ``[B, T, T]``: the class token's
    row over the patches, or the mean patch row for a model without a class token."""
    p = layout.prefix
    rows = r[:, 0, p:] if layout.class_token else r[:, p:, p:].mean(1)
    h, w = layout.grid
    if rows.shape[1] != h * w:
        raise MethodError(f"The model has {rows.shape[1]} patch tokens but a {h}x{w} patch grid.")
    return rows.reshape(-1, 1, h, w)


@register
class AttentionRolloutExplainer(Explainer):
    """Attention rollout (Abnar & Zuidema 2020, ACL, arXiv:2005.00928): the product of the
    layers' head-fused, residual-corrected attention, read at the class token. 1 pass."""

    name, family, library = "attention_rollout", "attention", "xaiscope"
    volumes = False  # timm ViTs take 2D images
    params = {
        "head_fusion": Param("mean", str, "how the heads of a layer are fused", choices=("mean", "max", "min")),
        "discard_ratio": Param(0.0, float, "share of the smallest fused attention entries set to zero", low=0.0),
    }

    def _validate(self) -> None:
        if not self.hparams["discard_ratio"] < 1:
            raise MethodError(f"discard_ratio of {self.name} must be below 1, got {self.hparams['discard_ratio']}.")

    @classmethod
    def applies_to(cls, model: torch.nn.Module) -> str | None:
        try:
            token_layout(model, cls.name)
        except MethodError as e:
            return str(e)
        return None

    def _attribute(self, model, x, y):
        layout = token_layout(model, self.name)
        hp = self.hparams

        def run(xb, yb):
            with captured_attention(layout) as store, torch.no_grad():
                out = model(xb)
            check_target_range(yb, out.shape[1])  # class-agnostic, but a target must still be a class
            if len(store) != len(layout.attentions):
                raise MethodError(f"{self.name}: {len(store)} of {len(layout.attentions)} attention layers ran.")
            m = token_map(rollout(store, hp["head_fusion"], hp["discard_ratio"]), layout).float()
            return F.interpolate(m, size=xb.shape[-2:], mode="bilinear", align_corners=False)

        return per_chunk(run, x, y, self.batch_size)

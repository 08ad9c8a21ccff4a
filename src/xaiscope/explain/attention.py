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

**Generic attention** (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV, arXiv:2103.15679, eq. 5-6).
Per layer the attention is weighted by the gradient of the target logit ``y_t`` with respect
to it and averaged over heads, positive part first:
``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` with ``∇A_l = ∂y_t/∂A_l``; the relevance of tokens to tokens
starts at the identity and accumulates layer by layer, ``R ← R + Ā_l R`` (l = 1..L). The map
is the class token's row of ``R`` over the patches (the mean patch row without a class
token), as for rollout. It depends on the class explained. Passes: 1 forward and 1
backward per image.
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
def captured_attention(layout: TokenLayout, *, keep_graph: bool = False):
    """Within the block, every attention module computes its probabilities explicitly (fused
    kernels off) and the list yielded receives them, ``[B, heads, T, T]`` per module in order
    (detached, unless ``keep_graph``: then gradients can be taken with respect to them)."""
    store: list[torch.Tensor] = []
    handles, fused = [], []

    def keep(_m, args, _out):
        store.append(args[0] if keep_graph else args[0].detach())

    for m in layout.attentions:
        fused.append(m.fused_attn)
        m.fused_attn = False
        handles.append(m.attn_drop.register_forward_hook(keep))
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


def generic_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """``R`` ``[B, T, T]`` of Chefer et al. 2021: ``R = I``, then ``R <- R + E_h[(grad * A)^+] R``
    per layer in order (module docstring)."""
    r = None
    for a, g in zip(attentions, gradients):
        cam = (g.double() * a.double()).clamp_min(0).mean(1)
        if r is None:
            r = torch.eye(cam.shape[-1], dtype=cam.dtype, device=cam.device).expand_as(cam).clone()
        r = r + cam @ r
    return r


def token_map(r: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Patch-grid maps ``[B, 1, h, w]`` from the rollout ``R`` ``[B, T, T]``: the class token's
    row over the patches, or the mean patch row for a model without a class token."""
    p = layout.prefix
    rows = r[:, 0, p:] if layout.class_token else r[:, p:, p:].mean(1)
    h, w = layout.grid
    if rows.shape[1] != h * w:
        raise MethodError(f"The model has {rows.shape[1]} patch tokens but a {h}x{w} patch grid.")
    return rows.reshape(-1, 1, h, w)


class _AttentionExplainer(Explainer):
    """Shared declarations: timm vision transformers only (their token layout), 2D images."""

    family, library = "attention", "xaiscope"
    volumes = False  # timm ViTs take 2D images

    @classmethod
    def applies_to(cls, model: torch.nn.Module) -> str | None:
        try:
            token_layout(model, cls.name)
        except MethodError as e:
            return str(e)
        return None


@register
class AttentionRolloutExplainer(_AttentionExplainer):
    """Attention rollout (Abnar & Zuidema 2020, ACL, arXiv:2005.00928): the product of the
    layers' head-fused, residual-corrected attention, read at the class token. 1 pass."""

    name = "attention_rollout"
    params = {
        "head_fusion": Param("mean", str, "how the heads of a layer are fused", choices=("mean", "max", "min")),
        "discard_ratio": Param(0.0, float, "share of the smallest fused attention entries set to zero", low=0.0),
    }

    def _validate(self) -> None:
        if not self.hparams["discard_ratio"] < 1:
            raise MethodError(f"discard_ratio of {self.name} must be below 1, got {self.hparams['discard_ratio']}.")

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


@register
class GenericAttentionExplainer(_AttentionExplainer):
    """Gradient-weighted attention propagated through the layers (Chefer, Gur & Wolf 2021,
    ICCV, arXiv:2103.15679), read at the class token. 1 forward + 1 backward."""

    name = "generic_attention"
    params = {}

    def _attribute(self, model, x, y):
        layout = token_layout(model, self.name)

        def run(xb, yb):
            xg = xb.detach().requires_grad_(True)  # the graph reaches the attention through the input
            with captured_attention(layout, keep_graph=True) as store, torch.enable_grad():
                out = model(xg)
                check_target_range(yb, out.shape[1])
                if len(store) != len(layout.attentions):
                    raise MethodError(f"{self.name}: {len(store)} of {len(layout.attentions)} attention layers ran.")
                grads = torch.autograd.grad(out.gather(1, yb.view(-1, 1)).sum(), store)
            r = generic_relevance([a.detach() for a in store], grads)
            m = token_map(r, layout).float()
            return F.interpolate(m, size=xb.shape[-2:], mode="bilinear", align_corners=False)

        return per_chunk(run, x, y, self.batch_size)

"""AttnLRP: layer-wise relevance propagation for vision transformers (timm ViTs).

Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML, arXiv:2402.05602.

**Relevance as gradient times input.** Every rule is written as a modified gradient: the
relevance at a tensor ``t`` is ``R_t = t ⊙ g_t``, where ``g`` is the gradient of the target
logit ``f_y(x)`` in which some local Jacobians are replaced by those of the rules below. The
backward starts from ``g = onehot(y)`` at the logits, so the output relevance is the target
logit (one-hot times the logit, as for the Zennit LRP methods), and the input relevance is
``R_x = x ⊙ g_x``: one forward and one backward per image. The forward values are the model's
own: a rule changes the backward only (a small autograd function that returns a value as is
and passes on a scaled gradient, or ``z.detach() + (u - u.detach())``, which has the value
``z`` and passes the gradient to ``u``).

**Rules** (``W``, ``b``: a layer's weight and bias; ``z = W x + b``; sums over the output ``j``):

- *Linear layers* (``qkv``, ``proj``, the MLP's ``fc1``/``fc2``, the head) and the *patch
  embedding convolution*: the ε-rule
  ``R_x_i = x_i Σ_j W_ji R_z_j / (z_j + ε sign z_j)`` (``sign 0 = +1``). With ``R_z = z ⊙ g_z``
  this is ``g_x = Wᵀ (g_z ⊙ z / (z + ε sign z))``: the output gradient scaled elementwise by
  ``z / (z + ε sign z)`` before the layer's own backward. ``epsilon = 0`` is LRP-0, the plain
  gradient. The bias (and ε) absorb their share of the relevance.
- *Additions* (the residual stream, the position embedding), *scaling by constants* (the
  attention scale ``d^-1/2``, layer scale), concatenating the class and register tokens,
  reshapes, and the pooling of the head (the class token or the mean of the patch tokens): the
  plain gradient, which conserves relevance through these linear operations. What is added
  as a parameter (``pos_embed``, ``cls_token``, register tokens) keeps its share; it does not
  reach the input.
- *LayerNorm* (the blocks' ``norm1``/``norm2``, the final ``norm`` or ``fc_norm``, q/k norms):
  AttnLRP's identity rule on the normalisation, the standard deviation taken as a constant
  (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML, arXiv:2202.07304): ``y = (x - mean(x)) / σ.detach() · w + b``. That is
  linear in ``x``, so ``Σ_i R_x_i = Σ_j R_y_j - Σ_j b_j g_y_j``.
- *Elementwise activations* (the MLP's GELU, any activation): the identity rule ``R_x = R_y``,
  i.e. ``g_x = g_y ⊙ f(x) / x`` (0 where ``x = 0``).
- *Softmax* of the attention scores ``s = softmax(x)`` (per row): AttnLRP's rule (their
  Proposition 3.1) ``R_x_i = x_i (R_s_i - s_i Σ_j R_s_j)``. With ``R_s = s ⊙ g_s``:
  ``R_x_i = x_i (s_i g_i - s_i Σ_j s_j g_j) = x_i Σ_j g_j s_j (δ_ij - s_i) = x_i Σ_j g_j ∂s_j/∂x_i``,
  the plain gradient of the softmax times its input, so the softmax keeps its own backward.
  The rule does not conserve: ``Σ_j R_s_j - Σ_i R_x_i`` (its bias term) is absorbed. Adding a
  constant to a row of scores changes nothing, since ``Σ_i g_x_i = 0``.
- *The two products of attention*, ``q kᵀ`` and ``A v``: the uniform rule, half the relevance
  to each factor. For a bilinear ``c = a b``, ``Σ a ⊙ ∂(g·c)/∂a = Σ c ⊙ g`` (and the same for
  ``b``), so a backward that passes half the gradient to each factor,
  ``(½ g bᵀ, ½ aᵀ g)``, gives each factor exactly half of ``R_c``. The elementwise gate of
  gated attention, ``x ⊙ σ(W x)``, takes the same rule (and the identity rule through ``σ``).

**Conservation.** With bias-free layers, ``pos_embed`` and the prefix tokens at zero and
``ε -> 0``, ``Σ R_x = f_y(x)`` less what the softmaxes absorb (their bias terms above); with
biases the layers absorb their share too.

**Models.** timm's ``VisionTransformer`` with timm ``Attention`` (every attention module's
forward is replaced by an explicit one for the call: ``qkv``, heads, q/k norm, ``q · scale``,
the uniform-rule product, softmax, ``attn_drop``, the uniform-rule product with ``v``, the
heads merged, ``norm``, ``proj``, ``proj_drop``), ``Mlp``, LayerNorm, linear layers and
elementwise activations; a model with any other layer (an attention-pooling head, a gated MLP,
RMSNorm) is refused with one sentence naming it. Passes: 1 forward and 1 backward per image.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from xaiscope.errors import MethodError
from xaiscope.explain.attention import TokenLayout, token_layout
from xaiscope.explain.base import Explainer, Param, register
from xaiscope.explain.chunking import per_chunk
from xaiscope.models.forward import check_target_range

#: activations that are not elementwise (the identity rule does not apply to them)
_NOT_ELEMENTWISE = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU"}
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me")


def _regrad(value: torch.Tensor, through: torch.Tensor) -> torch.Tensor:
    """The value ``value`` with the gradient passed to ``through`` (of the same value up to rounding)."""
    return value.detach() + (through - through.detach())


class _UniformMatmul(torch.autograd.Function):
    """``a @ b`` whose backward passes half of each factor's gradient: the uniform rule."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return 0.5 * (g @ b.transpose(-2, -1)), 0.5 * (a.transpose(-2, -1) @ g)


def uniform_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched) with the uniform rule: each factor receives half the relevance."""
    return _UniformMatmul.apply(a, b)


def uniform_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` (elementwise) with the uniform rule: each factor receives half the relevance."""
    return _regrad(a * b, 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b))


class _EpsilonRule(torch.autograd.Function):
    """``z`` as is; its gradient scaled by ``z / (z + ε sign z)`` (``sign 0 = +1``): the ε-rule."""

    @staticmethod
    def forward(ctx, z, epsilon):
        ctx.save_for_backward(z)
        ctx.epsilon = epsilon
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * z / (z + ctx.epsilon * (2 * (z >= 0).to(z.dtype) - 1)), None


def _epsilon_hook(epsilon: float):
    """Forward hook of linear layers and convolutions: the ε-rule on the output gradient."""

    def hook(_m, _args, z):
        return _EpsilonRule.apply(z, epsilon)

    return hook


def _layer_norm_hook(m: nn.LayerNorm, args, out):
    """LayerNorm's value with the gradient of ``(x - mean) / σ.detach() · w + b`` (the identity rule)."""
    x = args[0]
    dims = tuple(range(-len(m.normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    std = (centred.pow(2).mean(dims, keepdim=True) + m.eps).sqrt()
    y = centred / std.detach()
    if m.weight is not None:
        y = y * m.weight
    if m.bias is not None:
        y = y + m.bias
    return _regrad(out, y)


class _IdentityRule(torch.autograd.Function):
    """``f(x)`` (given, detached) whose gradient goes to ``x`` scaled by ``f(x) / x`` (0 where
    ``x = 0``): the identity rule ``R_x = R_y``."""

    @staticmethod
    def forward(ctx, x, fx):
        ctx.save_for_backward(x, fx)
        return fx.view_as(fx)

    @staticmethod
    def backward(ctx, g):
        x, fx = ctx.saved_tensors
        return torch.where(x == 0, torch.zeros_like(g), g * fx / x), None


def _identity_hook(_m, args, out):
    """Elementwise activation: its value, with the identity rule's gradient to its input."""
    return _IdentityRule.apply(args[0], out.detach())


def _explicit_attention(m: nn.Module):
    """timm ``Attention.forward`` written out with the uniform rule on both products."""
    heads = m.num_heads
    head_dim = getattr(m, "head_dim", None)

    def forward(x, attn_mask=None, is_causal=False, **_):
        b, t, c = x.shape
        hd = head_dim or c // heads
        gate = getattr(m, "gate", None)
        qkv = m.qkv(x).reshape(b, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = m.q_norm(q), m.k_norm(k)
        scores = uniform_matmul(q * m.scale, k.transpose(-2, -1))
        if is_causal:
            scores = scores + scores.new_full((t, t), float("-inf")).triu_(1)
        elif attn_mask is not None:
            scores = (
                scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        attn = m.attn_drop(scores.softmax(dim=-1))
        o = uniform_matmul(attn, v).transpose(1, 2).reshape(b, t, heads * hd)
        o = m.norm(o)
        if gate is not None:
            o = uniform_mul(o, m.gate(x).sigmoid())
        return m.proj_drop(m.proj(o))

    return forward


def _known_types():
    """The timm and torch module types AttnLRP has rules for: (modules with children, leaves)."""
    import timm.layers as tl
    import timm.models.vision_transformer as tv

    containers = (tv.Block, tv.ResPostBlock, tl.Attention, tl.Mlp, tl.PatchEmbed, nn.Sequential, nn.ModuleList)
    optional = (getattr(tl, "LayerScale", None), getattr(tv, "LayerScale", None), getattr(tl, "PatchDropout", None))
    leaves = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Identity, nn.modules.dropout._DropoutNd, tl.DropPath)
    return containers, leaves + tuple(c for c in optional if c is not None)


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ in _ACTIVATION_MODULES and type(m).__name__ not in _NOT_ELEMENTWISE


def unsupported(model: nn.Module, method: str = "attn_lrp") -> str | None:
    """None when AttnLRP's rules cover every layer of ``model`` (a timm ViT), else one sentence."""
    try:
        token_layout(model, method)
    except MethodError as e:
        return str(e)
    try:
        containers, leaves = _known_types()
    except ImportError:
        return f"{method} explains timm vision transformers; timm is not installed."
    import timm.models.vision_transformer as tv

    if not isinstance(model, tv.VisionTransformer):
        return f"{method} explains timm VisionTransformer models; this model is a {type(model).__name__}."
    for name, m in model.named_modules():
        has_children = next(m.children(), None) is not None
        # modules with children: exactly the known types (a subclass may compute its own way)
        known = type(m) in containers if has_children else isinstance(m, leaves) or _is_activation(m)
        if m is not model and not known:
            return (
                f"{method} has AttnLRP rules for timm ViT layers (attention, MLP, LayerNorm, linear layers, "
                f"elementwise activations); this model's {name} ({type(m).__name__}) has none."
            )
    return None


@contextlib.contextmanager
def attnlrp_rules(model: nn.Module, layout: TokenLayout, epsilon: float):
    """Within the block, ``model``'s backward is AttnLRP's (module docstring): attention forwards
    written out with the uniform rule, hooks on linear layers, convolutions, LayerNorms and
    activations. Everything is restored afterwards, also on errors."""
    handles, patched, inplace = [], [], []
    try:
        for m in layout.attentions:
            patched.append((m, m.__dict__.get("forward")))
            m.forward = _explicit_attention(m)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and epsilon > 0:
                handles.append(m.register_forward_hook(_epsilon_hook(epsilon)))
            elif isinstance(m, nn.LayerNorm):
                handles.append(m.register_forward_hook(_layer_norm_hook))
            elif _is_activation(m):
                if getattr(m, "inplace", False):
                    inplace.append(m)
                    m.inplace = False  # the hook reads the activation's input
                handles.append(m.register_forward_hook(_identity_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
        for m, own in patched:
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own


def attn_lrp_relevance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """``R_x = x ⊙ g_x`` ``[N, C, H, W]`` (in ``x``'s dtype) of AttnLRP's rules for targets ``y``:
    one forward and one backward of ``model`` (module docstring)."""
    why = unsupported(model)
    if why is not None:
        raise MethodError(why)
    layout = token_layout(model, "attn_lrp")
    xg = x.detach().requires_grad_(True)
    with attnlrp_rules(model, layout, epsilon), torch.enable_grad():
        out = model(xg)
        check_target_range(y, out.shape[1])
        (g,) = torch.autograd.grad(out.gather(1, y.view(-1, 1)).sum(), xg)
    return xg.detach() * g


@register
class AttnLRP(Explainer):
    """AttnLRP (Achtibat et al. 2024, ICML, arXiv:2402.05602) for timm vision transformers:
    ε-rule on linear layers, identity rule on LayerNorm's normalisation and on activations,
    the uniform rule on the attention products, softmax by its gradient. 1 forward + 1 backward."""

    name, family, library = "attn_lrp", "lrp", "xaiscope"
    volumes = False  # timm ViTs take 2D images
    params = {"epsilon": Param(1e-6, float, "epsilon stabiliser of the linear layers (0: LRP-0)", low=0.0)}

    @classmethod
    def applies_to(cls, model: nn.Module) -> str | None:
        return unsupported(model, cls.name)

    def _attribute(self, model, x, y):
        return per_chunk(
            lambda xb, yb: attn_lrp_relevance(model, xb, yb, self.hparams["epsilon"]), x, y, self.batch_size
        )

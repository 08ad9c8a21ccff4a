"""AttnLRP on timm vision transformers: the rules against a second implementation written in
relevance form, conservation, the uniform rule, invariances, model state and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xaiscope import explain
from xaiscope.errors import MethodError, XaiscopeError
from xaiscope.explain.lrp_attention import attn_lrp_relevance, uniform_matmul, uniform_mul

timm = pytest.importorskip("timm")


def toy_vit(dtype=torch.float32, **kw):
    """A tiny timm ViT with biases, position embedding and prefix tokens drawn at random and
    qkv weights scaled up, so that attention scores are far from uniform."""
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=2, in_chans=3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kw}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("pos_embed", "cls_token", "reg_token"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("qkv.weight"):
                p.mul_(10)
    return model.to(dtype)


def without_biases(model):
    """Every bias, the position embedding and the prefix tokens set to zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("pos_embed", "cls_token", "reg_token"):
                p.zero_()
    return model


def images(n=3, dtype=torch.float32):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=dtype)


def softmax_absorbed(model, x, y, epsilon):
    """The input relevance and what the softmaxes absorb, ``Σ_j R_s_j - Σ_i R_x_i`` per image
    (read from each attention's probabilities and their gradient; the scores are ``log s`` up to
    a constant per row, which the softmax rule ignores)."""
    store = []

    def keep(_m, args, _out):
        rec = {"s": args[0].detach()}
        store.append(rec)
        args[0].register_hook(lambda g: rec.__setitem__("g", g))

    hooks = [b.attn.attn_drop.register_forward_hook(keep) for b in model.blocks]
    try:
        r = attn_lrp_relevance(model, x, y, epsilon)
    finally:
        for h in hooks:
            h.remove()
    absorbed = 0
    for rec in store:
        s, g = rec["s"], rec["g"]
        g_scores = s * (g - (s * g).sum(-1, keepdim=True))
        absorbed = absorbed + (s * g).sum((1, 2, 3)) - (s.log() * g_scores).sum((1, 2, 3))
    return r, absorbed


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2}, {"global_pool": "avg", "class_token": False}])
def test_relevance_is_conserved_up_to_what_the_softmaxes_absorb(kw):
    model, x, y = without_biases(toy_vit(torch.float64, **kw)), images(dtype=torch.float64), torch.tensor([0, 1, 1])
    logit = model(x).gather(1, y.view(-1, 1)).squeeze(1).detach()
    r, absorbed = softmax_absorbed(model, x, y, 1e-12)
    total = r.flatten(1).sum(1)
    torch.testing.assert_close(total + absorbed, logit, rtol=1e-9, atol=1e-12)
    assert (absorbed.abs() > 1e-3 * logit.abs()).all()  # the softmaxes do absorb: the accounting is needed
    # with biases, position embedding and prefix tokens the same accounting fails
    model, x = toy_vit(torch.float64, **kw), images(dtype=torch.float64)
    logit = model(x).gather(1, y.view(-1, 1)).squeeze(1).detach()
    r, absorbed = softmax_absorbed(model, x, y, 1e-12)
    assert ((r.flatten(1).sum(1) + absorbed - logit).abs() > 1e-3 * logit.abs()).all()


def reference_attn_lrp(model, x, y, eps):
    """AttnLRP written in relevance form on explicit tensors for a timm ViT that reads its class
    token: the forward by hand, then each rule as its formula, layer by layer backwards."""

    def stab(z):
        return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    def linear_eps(a, w, z, r):  # ε-rule: R_a = a ⊙ Wᵀ(R_z / (z + ε sign z))
        return a * ((r / stab(z)) @ w)

    def layer_norm(t, ln):
        mu = t.mean(-1, keepdim=True)
        sigma = ((t - mu) ** 2).mean(-1, keepdim=True).add(ln.eps).sqrt()
        return (t - mu) / sigma * ln.weight + ln.bias, sigma

    def layer_norm_rule(t, ln, r):  # y = J t + b with J = diag(w) C / σ, C = I - 11ᵀ/n: R_t = t ⊙ Jᵀ(R_y / y)
        out, sigma = layer_norm(t, ln)
        n = t.shape[-1]
        centre = torch.eye(n, dtype=t.dtype) - 1.0 / n
        return t * (((r / out) * ln.weight) @ centre) / sigma

    p = model.patch_embed.proj
    patches = F.unfold(x, p.kernel_size, stride=p.stride).transpose(1, 2)  # [N, L, C k k]
    wp = p.weight.flatten(1)
    z0 = patches @ wp.T + p.bias
    tok = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), z0], 1)
    t = tok + model.pos_embed
    t0, saved = t, []
    for blk in model.blocks:
        at = blk.attn
        n, tt, d = t.shape
        h1, _ = layer_norm(t, blk.norm1)
        qkv = h1 @ at.qkv.weight.T + at.qkv.bias
        q, k, v = qkv.reshape(n, tt, 3, at.num_heads, d // at.num_heads).permute(2, 0, 3, 1, 4)
        qs = q * at.scale
        s = qs @ k.transpose(-2, -1)
        a = s.softmax(-1)
        o_heads = a @ v
        o = o_heads.transpose(1, 2).reshape(n, tt, d)
        att = o @ at.proj.weight.T + at.proj.bias
        t2 = t + att
        h2, _ = layer_norm(t2, blk.norm2)
        u = h2 @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        gl = F.gelu(u)
        mm = gl @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        t3 = t2 + mm
        saved.append(dict(t=t, h1=h1, qkv=qkv, q=qs, k=k, v=v, s=s, a=a, o_heads=o_heads, o=o, att=att, t2=t2,
                          h2=h2, u=u, gl=gl, mm=mm, t3=t3))  # fmt: skip
        t = t3
    hf, _ = layer_norm(t, model.norm)
    c = hf[:, 0]
    logit = c @ model.head.weight.T + model.head.bias

    r_logit = torch.zeros_like(logit).scatter_(1, y.view(-1, 1), 1.0) * logit
    r_hf = torch.zeros_like(hf)
    r_hf[:, 0] = linear_eps(c, model.head.weight, logit, r_logit)
    r_t = layer_norm_rule(t, model.norm, r_hf)
    halves = []
    for blk, sv in zip(reversed(model.blocks), reversed(saved)):
        at, (n, tt, d) = blk.attn, sv["t"].shape
        r_t2 = sv["t2"] / sv["t3"] * r_t  # the residual sum: z-rule, shares by value
        r_mm = sv["mm"] / sv["t3"] * r_t
        r_u = linear_eps(sv["gl"], blk.mlp.fc2.weight, sv["mm"], r_mm)  # then GELU: identity rule
        r_h2 = linear_eps(sv["h2"], blk.mlp.fc1.weight, sv["u"], r_u)
        r_t2 = r_t2 + layer_norm_rule(sv["t2"], blk.norm2, r_h2)
        r_tin = sv["t"] / sv["t2"] * r_t2
        r_att = sv["att"] / sv["t2"] * r_t2
        r_o = linear_eps(sv["o"], at.proj.weight, sv["att"], r_att)
        r_oh = r_o.reshape(n, tt, at.num_heads, -1).transpose(1, 2)
        ratio = r_oh / sv["o_heads"]  # O = A v, uniform rule: R_A_ij = ½ Σ_d A_ij v_jd R_O_id / O_id
        r_a = 0.5 * sv["a"] * (ratio @ sv["v"].transpose(-2, -1))
        r_v = 0.5 * sv["v"] * (sv["a"].transpose(-2, -1) @ ratio)
        r_s = sv["s"] * (r_a - sv["a"] * r_a.sum(-1, keepdim=True))  # softmax: R_x = x (R_s - s Σ R_s)
        ratio = r_s / sv["s"]  # S = q kᵀ, uniform rule
        r_q = 0.5 * sv["q"] * (ratio @ sv["k"])
        r_k = 0.5 * sv["k"] * (ratio.transpose(-2, -1) @ sv["q"])
        halves.append((r_oh.sum(), r_a.sum(), r_v.sum(), r_s.sum(), r_q.sum(), r_k.sum()))
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(n, tt, 3 * d)
        r_h1 = linear_eps(sv["h1"], at.qkv.weight, sv["qkv"], r_qkv)
        r_t = r_tin + layer_norm_rule(sv["t"], blk.norm1, r_h1)
    r_z0 = (tok / t0 * r_t)[:, 1:]  # the position embedding keeps its share
    r_patches = patches * ((r_z0 / stab(z0)) @ wp)
    return F.fold(r_patches.transpose(1, 2), x.shape[-2:], p.kernel_size, stride=p.stride), halves


@pytest.mark.parametrize("depth,eps", [(1, 1e-9), (1, 0.05), (2, 0.05)])
def test_rules_equal_a_second_implementation_in_relevance_form(depth, eps):
    model, x, y = toy_vit(torch.float64, depth=depth), images(dtype=torch.float64), torch.tensor([0, 1, 1])
    with torch.no_grad():
        want, halves = reference_attn_lrp(model, x, y, eps)
    got = attn_lrp_relevance(model, x, y, eps)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    for r_o, r_a, r_v, r_s, r_q, r_k in halves:  # each factor of both products gets half
        torch.testing.assert_close(torch.stack([r_a, r_v]), 0.5 * r_o.expand(2))
        torch.testing.assert_close(torch.stack([r_q, r_k]), 0.5 * r_s.expand(2))
    # through the explainer (float32 inputs and model)
    a = explain.get("attn_lrp", epsilon=eps)(model.float(), x.float(), y)
    torch.testing.assert_close(a.double(), want, rtol=1e-3, atol=1e-5)


def test_the_uniform_product_has_the_value_of_a_matmul_and_gives_each_factor_half():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 4, 6, generator=g)
    a.requires_grad_(True)
    b.requires_grad_(True)
    c = uniform_matmul(a, b)
    assert torch.equal(c, a @ b)
    w = torch.randn(c.shape, generator=g)
    ga, gb = torch.autograd.grad((c * w).sum(), (a, b))
    r_c = (c * w).detach().sum()
    torch.testing.assert_close((a * ga).sum(), 0.5 * r_c)
    torch.testing.assert_close((b * gb).sum(), 0.5 * r_c)
    # the elementwise product (the gate of gated attention): the same halves, elementwise
    u, v = torch.randn(4, 5, generator=g, requires_grad=True), torch.randn(4, 5, generator=g, requires_grad=True)
    c = uniform_mul(u, v)
    assert torch.equal(c, u * v)
    gu, gv = torch.autograd.grad(c.sum(), (u, v))
    torch.testing.assert_close(u * gu, 0.5 * c.detach())
    torch.testing.assert_close(v * gv, 0.5 * c.detach())


def test_the_rules_differ_from_gradient_times_input():
    model, x, y = toy_vit(), images(), torch.tensor([0, 1, 1])
    a = explain.get("attn_lrp")(model, x, y)
    ixg = explain.get("input_x_gradient")(model, x, y)
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert (a - ixg).abs().sum() > 0.1 * ixg.abs().sum()


def test_batch_size_does_not_change_the_maps_and_one_pass_is_counted():
    from xaiscope.models import count_passes

    model, x = toy_vit(reg_tokens=2), torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 1, 0, 1])
    one, four = explain.get("attn_lrp", batch_size=1), explain.get("attn_lrp", batch_size=4)
    with count_passes(model) as count:
        a1 = one(model, x, y)
    assert count.rows == 5 * one.passes((3, 16, 16)) == 5 and count.largest_call == 1
    with count_passes(model) as count:
        a4 = four(model, x, y)
    assert count.rows == 5 and count.largest_call == 4
    torch.testing.assert_close(a1, a4, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a4, four(model, x, 1 - y))  # the map depends on the class explained


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [b.attn.fused_attn for b in model.blocks],
        [sorted(vars(m)) for m in model.modules()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    )


def test_the_model_is_left_as_it_was_also_after_an_error():
    model, x, y = toy_vit(), images(), torch.tensor([0, 1, 1])
    with torch.no_grad():
        before_out = model(x)
    before = _state(model)
    explain.get("attn_lrp")(model, x, y)
    after = _state(model)
    assert after[1:] == before[1:] and all(torch.equal(before[0][k], v) for k, v in after[0].items())
    with torch.no_grad():
        assert torch.equal(model(x), before_out)

    def boom(_m, _args, _out):
        raise RuntimeError("boom")

    h = model.blocks[1].mlp.fc2.register_forward_hook(boom)
    with pytest.raises((XaiscopeError, RuntimeError)):
        explain.get("attn_lrp")(model, x, y)
    h.remove()
    after = _state(model)
    assert after[1:] == before[1:] and all(torch.equal(before[0][k], v) for k, v in after[0].items())
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


def test_the_forward_inside_the_rules_is_the_models():
    from xaiscope.explain.attention import token_layout
    from xaiscope.explain.lrp_attention import attnlrp_rules

    model, x = toy_vit(), images()
    with torch.no_grad():
        want = model(x)
        with attnlrp_rules(model, token_layout(model), 1e-6):
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cnns_and_unsupported_transformers_are_refused_with_one_sentence():
    from xaiscope.models import build

    cnn = build("small_cnn", width=4)
    assert "attn_lrp explains vision transformers" in explain.get_class("attn_lrp").applies_to(cnn)
    with pytest.raises(MethodError, match="attn_lrp explains vision transformers"):
        explain.get("attn_lrp")(cnn, torch.rand(1, 1, 16, 16), torch.tensor([0]))
    vit = toy_vit()
    assert explain.get_class("attn_lrp").applies_to(vit) is None
    for name in ("lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box", "lrp_alpha2_beta1_flat"):
        with pytest.raises(MethodError, match=rf"{name} has LRP rules for CNN layers only; .*use attn_lrp"):
            explain.get(name)(vit, images(1), torch.tensor([0]))
    kept, left = explain.applicable(["lrp"], vit)
    assert kept == ["attn_lrp"] and set(left) == {"lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
                                                   "lrp_alpha2_beta1_flat"}  # fmt: skip
    kept, left = explain.applicable(["lrp"], cnn)
    assert "attn_lrp" in left and "attn_lrp" not in kept
    pooled = toy_vit(global_pool="map")  # attention pooling: no rule for it here
    with pytest.raises(MethodError, match=r"attn_lrp has AttnLRP rules for timm ViT layers .* attn_pool"):
        explain.get("attn_lrp")(pooled, images(1), torch.tensor([0]))

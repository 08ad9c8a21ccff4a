"""Attention rollout on timm vision transformers, and which methods apply to which models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cli_helpers import assert_user_error, run_cli
from xaiscope import explain
from xaiscope.errors import MethodError
from xaiscope.explain.attention import rollout

timm = pytest.importorskip("timm")


def toy_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=2, in_chans=3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kw}).eval()


def hand_rollout(model, x, fusion="mean", prefix=1, class_token=True):
    """Attention recomputed from each block's input and its qkv weights; rollout multiplied by hand."""
    inputs = []
    hooks = [b.norm1.register_forward_hook(lambda m, a, out: inputs.append(out)) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    r = None
    for blk, h in zip(model.blocks, inputs):
        at = blk.attn
        b, t, c = h.shape
        qkv = at.qkv(h).reshape(b, t, 3, at.num_heads, c // at.num_heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        a = ((q * at.scale) @ k.transpose(-2, -1)).softmax(-1).double()
        a = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[fusion]
        a = a + torch.eye(t, dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    rows = r[:, 0, prefix:] if class_token else r[:, prefix:, prefix:].mean(1)
    g = int(rows.shape[1] ** 0.5)
    return F.interpolate(rows.reshape(-1, 1, g, g).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_the_product_computed_by_hand(fusion):
    model, x = toy_vit(), torch.rand(3, 3, 16, 16)
    a = explain.get("attention_rollout", head_fusion=fusion)(model, x, torch.tensor([0, 1, 0]))
    assert a.shape == (3, 3, 16, 16)
    torch.testing.assert_close(a[:, :1], hand_rollout(model, x, fusion), rtol=1e-5, atol=1e-6)
    assert all(blk.attn.fused_attn == timm.layers.use_fused_attn() for blk in model.blocks)  # restored


def test_register_tokens_and_global_pooling_take_the_layout_from_the_model():
    x = torch.rand(2, 3, 16, 16)
    reg = toy_vit(reg_tokens=4)
    assert reg.num_prefix_tokens == 5
    a = explain.get("attention_rollout")(reg, x, torch.tensor([0, 1]))
    torch.testing.assert_close(a[:, :1], hand_rollout(reg, x, prefix=5), rtol=1e-5, atol=1e-6)
    gap = toy_vit(global_pool="avg", class_token=False)
    a = explain.get("attention_rollout")(gap, x, torch.tensor([0, 1]))
    torch.testing.assert_close(a[:, :1], hand_rollout(gap, x, prefix=0, class_token=False), rtol=1e-5, atol=1e-6)


def test_rollout_closed_forms():
    # identity attention: every layer is I, so R = I
    eye = torch.eye(4).expand(1, 2, 4, 4)
    torch.testing.assert_close(rollout([eye, eye]), torch.eye(4, dtype=torch.float64).expand(1, 4, 4))
    # uniform attention U: (U + I) / 2 per layer
    u = torch.full((1, 2, 4, 4), 0.25)
    step = (torch.full((4, 4), 0.25, dtype=torch.float64) + torch.eye(4, dtype=torch.float64)) / 2
    torch.testing.assert_close(rollout([u, u])[0], step @ step)
    # discarding the smallest third of the entries: 0.05, 0.1 and 0.15 go, then + I and rows renormalised
    a = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.15, 0.05, 0.8]], dtype=torch.float64)
    want = torch.tensor([[1.5, 0.3, 0.2], [0.0, 1.6, 0.3], [0.0, 0.0, 1.8]], dtype=torch.float64)
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(rollout([a.view(1, 1, 3, 3)], discard_ratio=1 / 3)[0], want)
    # the class token's attention to itself is never discarded, even when it is among the smallest
    a[0, 0] = 0.01
    got = rollout([a.view(1, 1, 3, 3)], discard_ratio=1 / 3)[0]
    assert got[0, 0] == pytest.approx(1.01 / (1.01 + 0.3 + 0.2)) and got[1, 0] == 0 and got[2, 1] == 0


def test_methods_that_cannot_explain_a_model_are_left_out_or_refused(tmp_path, capsys):
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    cnn(torch.rand(1, 3, 16, 16))
    kept, left = explain.applicable(["all"], cnn)
    assert "attention_rollout" in left and "attention_rollout" not in kept and "saliency" in kept
    with pytest.raises(MethodError, match=r"attention_rollout explains vision transformers .* this model has none"):
        explain.applicable(["saliency", "attention_rollout"], cnn)
    vit = toy_vit()
    kept, left = explain.applicable(["lrp", "attention"], vit)
    assert kept == ["attn_lrp", "attention_rollout", "generic_attention"]
    assert set(left) == set(explain.expand(["lrp"])) - {"attn_lrp"}
    kept, left = explain.applicable(["lrp"], cnn)
    assert "attn_lrp" in left and kept == ["lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box", "lrp_alpha2_beta1_flat"]
    with pytest.raises(MethodError, match=r"lrp_epsilon_plus_flat has LRP rules for CNN layers only.*use attn_lrp"):
        explain.applicable(["lrp_epsilon_plus_flat"], vit)
    with pytest.raises(MethodError, match=r"LRP rules for CNN layers only"):
        explain.get("lrp_epsilon_plus_flat")(vit, torch.rand(1, 3, 16, 16), torch.tensor([0]))
    # the command line: groups leave out with a message, a named method is one sentence
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.random.rand(4, 3, 16, 16).astype(np.float32), y=np.array([0, 1, 0, 1]))
    args = ["evaluate", "--model", "small_cnn", "--data", str(tmp_path / "d.npz"), "--metrics", "sparseness"]
    r = run_cli(capsys, *args, "--methods", "saliency,attention", "--out", str(tmp_path / "a.parquet"))
    assert r.code == 0, r.err
    assert "left out attention_rollout, generic_attention: they cannot explain this model" in " ".join(r.out.split())
    r = run_cli(capsys, *args, "--methods", "attention_rollout", "--out", str(tmp_path / "b.parquet"))
    assert_user_error(r, r"attention_rollout explains vision transformers")
    spec = "timm:vit_tiny_patch16_224,img_size=16,patch_size=4,depth=2,embed_dim=24,num_heads=3"
    r = run_cli(capsys, *["explain", "--model", spec, "--data", str(tmp_path / "d.npz")], "--methods",
                "attention_rollout,lrp", "--out", str(tmp_path / "maps"), "--overlays", "1")  # fmt: skip
    assert r.code == 0, r.err
    assert (tmp_path / "maps" / "attention_rollout.npz").exists()
    assert (tmp_path / "maps" / "attn_lrp.npz").exists()  # the lrp group's method for transformers
    assert not list((tmp_path / "maps").glob("lrp*.npz"))


def test_cams_on_vit_tokens_and_swin_channels_last_equal_the_formula_by_hand():
    """Grad-CAM on a ViT's last norm1 (tokens laid on the patch grid, prefix tokens dropped) and
    on a Swin stage (channels last): ReLU(sum_k mean_ij(g_k) A_k), upsampled."""
    vit, x, y = toy_vit(reg_tokens=2), torch.rand(2, 3, 16, 16), torch.tensor([1, 0])
    layer = vit.blocks[-1].norm1
    acts = {}
    h = layer.register_forward_hook(lambda m, a, out: acts.__setitem__("a", out))
    xr = x.clone().requires_grad_(True)
    out = vit(xr)
    h.remove()
    (g,) = torch.autograd.grad(out.gather(1, y.view(-1, 1)).sum(), acts["a"])
    a = acts["a"].detach()[:, 3:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    g = g[:, 3:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    want = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    want = F.interpolate(want, size=(16, 16), mode="bilinear", align_corners=False)
    got = explain.get("gradcam")(vit, x, y)
    torch.testing.assert_close(got[:, :1], want, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(explain.get("gradcam_plus_plus")(vit, x, y)).all()
    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2, embed_dim=24,
        depths=(1, 1), num_heads=(1, 2), num_classes=2,
    ).eval()  # fmt: skip
    xs = torch.rand(2, 3, 32, 32)
    got = explain.get("gradcam", layer="layers.1")(swin, xs, y)
    assert got.shape == xs.shape and torch.isfinite(got).all() and got.abs().sum() > 0
    with pytest.raises(MethodError, match=r"needs a layer with spatial output"):
        explain.get("gradcam", layer="head.fc")(swin, xs, y)


def test_rollout_does_not_depend_on_the_batch_size_or_the_target_and_counts_one_pass():
    from xaiscope.models import count_passes

    vit, x = toy_vit(), torch.rand(5, 3, 16, 16)
    ex1, ex4 = explain.get("attention_rollout", batch_size=1), explain.get("attention_rollout", batch_size=4)
    with count_passes(vit) as count:
        a1 = ex1(vit, x, torch.zeros(5, dtype=torch.long))
    assert count.rows == 5 == 5 * ex1.passes((3, 16, 16))
    torch.testing.assert_close(a1, ex4(vit, x, torch.ones(5, dtype=torch.long)), rtol=1e-5, atol=1e-7)


def hand_generic_attention(model, x, y, prefix=1, class_token=True):
    """Chefer et al. 2021 by hand: each block's attention recomputed explicitly from its qkv
    weights inside the forward, its gradient taken, R = I; R += mean_h((grad * A)^+) R."""
    store = []

    def explicit(at):
        def forward(h, attn_mask=None, **_):
            b, t, c = h.shape
            qkv = at.qkv(h).reshape(b, t, 3, at.num_heads, c // at.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            q, k = at.q_norm(q), at.k_norm(k)
            a = ((q * at.scale) @ k.transpose(-2, -1)).softmax(-1)
            a.retain_grad()
            store.append(a)
            o = (a @ v).transpose(1, 2).reshape(b, t, c)
            return at.proj_drop(at.proj(at.norm(o)))

        return forward

    for blk in model.blocks:
        blk.attn.forward = explicit(blk.attn)
    try:
        xg = x.clone().requires_grad_(True)
        model(xg).gather(1, y.view(-1, 1)).sum().backward()
    finally:
        for blk in model.blocks:
            del blk.attn.forward
    t = store[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64).expand(x.shape[0], t, t)
    for a in store:
        r = r + (a.grad.double() * a.double()).clamp(min=0).mean(1) @ r
    rows = r[:, 0, prefix:] if class_token else r[:, prefix:, prefix:].mean(1)
    g = int(rows.shape[1] ** 0.5)
    return F.interpolate(rows.reshape(-1, 1, g, g).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2}, {"global_pool": "avg", "class_token": False}])
def test_generic_attention_equals_the_hand_written_reference(kw):
    from xaiscope.models import count_passes

    model, x, y = (
        toy_vit(**kw),
        torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 1, 1]),
    )
    m = explain.get("generic_attention", batch_size=2)
    with count_passes(model) as count:
        a = m(model, x, y)
    assert count.rows == 3 and m.passes((3, 16, 16)) == 1
    prefix = model.num_prefix_tokens
    want = hand_generic_attention(model, x, y, prefix=prefix, class_token=model.global_pool == "token")
    torch.testing.assert_close(a[:, :1], want, rtol=1e-5, atol=1e-6)
    other = m(model, x, 1 - y)  # the map depends on the class explained
    assert not torch.allclose(other, a)
    assert all(blk.attn.fused_attn == timm.layers.use_fused_attn() for blk in model.blocks)  # restored


def test_generic_attention_refuses_a_cnn_with_one_sentence():
    from xaiscope.models import build

    with pytest.raises(MethodError, match="generic_attention explains vision transformers"):
        explain.get("generic_attention")(build("small_cnn", width=4), torch.rand(1, 1, 16, 16), torch.tensor([0]))


def test_timm_models_take_their_checkpoints_normalisation_else_the_datas(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    spec = "timm:vit_tiny_patch16_224,img_size=16,patch_size=4,depth=1,embed_dim=12,num_heads=2"
    from xaiscope.models import load

    torch.save(load(spec, num_classes=2, in_channels=3).state_dict(), tmp_path / "w.pt")
    base = ["explain", "--model", spec, "--data", tmp_path / "d", "--methods", "input", "--overlays", "0"]
    assert run_cli(capsys, *base, "--out", tmp_path / "raw", "--normalise-images", "none").code == 0
    raw = np.load(tmp_path / "raw" / "input.npz")["attributions"].astype(np.float64)
    assert run_cli(capsys, *base, "--out", tmp_path / "ckpt", "--weights", tmp_path / "w.pt").code == 0
    ckpt = np.load(tmp_path / "ckpt" / "input.npz")["attributions"]
    np.testing.assert_allclose(ckpt, (raw - 0.5) / 0.5, atol=1e-5)  # vit_tiny's pretrained mean and std
    assert run_cli(capsys, *base, "--out", tmp_path / "rand").code == 0  # random weights: the data's statistics
    rand = np.load(tmp_path / "rand" / "input.npz")["attributions"].astype(np.float64)
    mean = raw.mean(axis=(0, 2, 3), keepdims=True)
    std = raw.std(axis=(0, 2, 3), keepdims=True, ddof=1)
    np.testing.assert_allclose(rand, (raw - mean) / std, atol=1e-4)


def test_model_randomisation_on_a_vit_keeps_its_layer_norms_and_goes_top_down():
    from xaiscope import evaluate
    from xaiscope.evaluate.base import randomisable_layers
    from xaiscope.evaluate.randomisation import randomised_models

    model = toy_vit()
    names = [n for n, _ in randomisable_layers(model)]
    assert names and not any("norm" in n for n in names)
    assert any(n.endswith("attn.qkv") for n in names) and any(n.endswith("mlp.fc1") for n in names)
    first_name, first = next(randomised_models(model, "top_down", seed=0))
    assert first_name == names[-1] == "head"
    for (n, p), q in zip(model.named_parameters(), first.parameters()):
        assert torch.equal(p, q) != n.startswith("head."), n  # only the head changed so far
    m = evaluate.get("model_parameter_randomisation")
    assert m.passes((3, 16, 16), explain.get("saliency"), model) == len(names)

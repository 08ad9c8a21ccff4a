"""Every method on every supported architecture; invariances; pass counts; model state."""

from __future__ import annotations

import pytest
import torch

from xaiscope import explain
from xaiscope.errors import MethodError, ModelError, XaiscopeError
from xaiscope.models import build, count_passes, load

#: cheap settings so every method runs on every model in the suite
CHEAP = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"n_samples": 3},
    "vargrad": {"n_samples": 3},
    "deeplift_shap": {"n_baselines": 2},
    "gradient_shap": {"n_samples": 3, "n_baselines": 2},
    "occlusion": {"window": 16, "stride": 16},  # 4 windows at 32x32
    "feature_ablation": {"patch": 16},
    "lime": {"n_samples": 8, "n_segments": 8},
    "kernel_shap": {"n_samples": 8, "n_segments": 8},
}
#: the methods that explain CNNs (the attention methods and attn_lrp explain transformers only:
#: tests/test_attention.py, tests/test_attn_lrp.py)
CNN_METHODS = [n for n in explain.names() if explain.get_class(n).applies_to(build("small_cnn", width=4)) is None]
TRANSFORMER_METHODS = ["attention_rollout", "generic_attention", "attn_lrp"]
STOCHASTIC = [n for n in CNN_METHODS if explain.get_class(n).stochastic]
DETERMINISTIC = [n for n in CNN_METHODS if not explain.get_class(n).stochastic]


def _models():
    torch.manual_seed(0)
    return {
        "small_cnn/gray": (build("small_cnn", in_channels=1, num_classes=2, width=4), 1),
        "small_vgg/rgb": (build("small_vgg", in_channels=3, num_classes=3, width=4), 3),
        "small_resnet/gray": (build("small_resnet", in_channels=1, num_classes=2, width=4), 1),
    }


@pytest.mark.parametrize("model_name", list(_models()))
@pytest.mark.parametrize("method", explain.names())
def test_every_method_on_zoo_models(model_name, method):
    model, c = _models()[model_name]
    x = torch.rand(2, c, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    why = explain.get_class(method).applies_to(model)
    if why is not None:  # a transformer-only method on a CNN: one sentence, never a map
        assert method in TRANSFORMER_METHODS, why
        with pytest.raises(MethodError, match="explains vision transformers"):
            explain.get(method)(model, x, y)
        return
    a = explain.get(method, **CHEAP.get(method, {}))(model, x, y)
    assert a.shape == x.shape and a.dtype == torch.float32 and a.device == x.device
    assert torch.isfinite(a).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "densenet121"])
def test_every_method_on_torchvision_models(arch):
    torch.manual_seed(0)
    model = load(f"torchvision:{arch}", num_classes=3, in_channels=3)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the smallest DenseNet input
    y = torch.tensor([2])
    for method in explain.names():
        if explain.get_class(method).applies_to(model) is not None:
            continue  # tested on the zoo models
        if method == "cam" and arch == "vgg11_bn":
            # VGG's head is 7x7 pooling + three linear layers: CAM is undefined there
            with pytest.raises(MethodError, match="cam needs a model that ends in global average pooling"):
                explain.get(method)(model, x, y)
            continue
        a = explain.get(method, **CHEAP.get(method, {}))(model, x, y)
        assert a.shape == x.shape, method
        assert torch.isfinite(a).all(), method


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_batch_size_does_not_change_deterministic_maps(small_cnn, gray_batch, method):
    x, y = gray_batch
    hp = CHEAP.get(method, {})
    a1 = explain.get(method, batch_size=1, **hp)(small_cnn, x, y)
    a16 = explain.get(method, batch_size=16, **hp)(small_cnn, x, y)
    torch.testing.assert_close(a1, a16, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", STOCHASTIC)
def test_same_seed_same_maps_other_seed_other_maps(small_cnn, gray_batch, method):
    x, y = gray_batch
    hp = CHEAP.get(method, {})
    a = explain.get(method, seed=3, **hp)(small_cnn, x, y)
    b = explain.get(method, seed=3, **hp)(small_cnn, x, y)
    c = explain.get(method, seed=4, **hp)(small_cnn, x, y)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_stochastic_methods_leave_global_rng_alone(small_cnn, gray_batch):
    x, y = gray_batch
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    explain.get("smoothgrad", n_samples=2)(small_cnn, x, y)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("method", CNN_METHODS)
def test_documented_passes_equal_counted_passes(small_cnn, gray_batch, method):
    """Images through the first convolution (shared by the traced copies DeepLIFT and guided
    backprop run on) equal the documented passes per image times the number of images (given
    the model, whose layer's channels scorecam and ablationcam count)."""
    x, y = gray_batch
    ex = explain.get(method, batch_size=8, **CHEAP.get(method, {}))
    with count_passes(small_cnn.features[0]) as count:
        ex(small_cnn, x, y)
    assert count.rows == ex.passes(tuple(x.shape[1:]), small_cnn) * x.shape[0]
    assert count.largest_call <= 8


@pytest.mark.parametrize(
    "method", ["lime", "kernel_shap", "occlusion", "integrated_gradients", "smoothgrad", "gradient_shap"]
)
def test_batch_size_bounds_images_per_model_call(small_cnn, gray_batch, method):
    x, y = gray_batch
    with count_passes(small_cnn) as count:
        explain.get(method, batch_size=5, **CHEAP.get(method, {}))(small_cnn, x, y)
    assert count.largest_call <= 5


def test_model_state_is_restored_after_success_and_failure(gray_batch):
    torch.manual_seed(0)
    model = build("small_vgg", width=4).train()
    model.features[0][0].weight.requires_grad_(False)
    before_flags = [p.requires_grad for p in model.parameters()]
    x, y = gray_batch
    explain.get("saliency")(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before_flags
    with pytest.raises(XaiscopeError):
        explain.get("gradcam", layer="no.such.layer")(model, x, y)
    with pytest.raises(ModelError, match="Target class 5"):
        explain.get("saliency")(model, x, torch.tensor([0, 1, 5, 0]))  # out-of-range target
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == before_flags


def test_unknown_method_and_hyperparameters_are_clear_errors():
    with pytest.raises(MethodError, match="Unknown method 'saliancy'.*did you mean 'saliency'"):
        explain.get("saliancy")
    with pytest.raises(MethodError, match="integrated_gradients has no hyperparameter 'steps'"):
        explain.get("integrated_gradients", steps=3)
    with pytest.raises(MethodError, match="'n_steps' of integrated_gradients must be int, got 'ten'"):
        explain.get("integrated_gradients", n_steps="ten")
    with pytest.raises(MethodError, match="'n_steps' of integrated_gradients must be >= 1, got 0"):
        explain.get("integrated_gradients", n_steps=0)
    with pytest.raises(MethodError, match="'baseline' of occlusion must be one of zero, mean, blur"):
        explain.get("occlusion", baseline="grey")


def test_cam_methods_on_model_without_conv_are_clear_errors(gray_batch):
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    x, y = gray_batch
    for name in ("gradcam", "gradcam_plus_plus", "guided_gradcam", "scorecam", "ablationcam"):
        with pytest.raises(MethodError, match=f"{name} needs a model with a Conv2d or Conv3d layer"):
            explain.get(name)(mlp, x, y)
    with pytest.raises(MethodError, match="cam needs a model that ends in global average pooling"):
        explain.get("cam")(mlp, x, y)


def test_wrong_channel_count_is_a_clear_error(small_cnn):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ModelError, match="does not accept images with 3 channel"):
        explain.get("saliency")(small_cnn, x, torch.tensor([0, 1]))


MODEL_METHODS = [m for m in CNN_METHODS if m not in ("random", "sobel", "laplace", "input")]


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_target_beyond_the_outputs_is_a_clear_error(small_cnn, method):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    hp = {"n_samples": 8} if method in ("lime", "kernel_shap") else {}
    with pytest.raises(ModelError, match=r"Target class 7 is beyond the model's outputs"):
        explain.get(method, **hp)(small_cnn, x, torch.tensor([0, 7]))
    # a negative target would silently index from the end: refused before any model call
    with (
        count_passes(small_cnn) as c,
        pytest.raises(ModelError, match="Targets must be class indices 0, 1, ...; got -1"),
    ):
        explain.get(method, **hp)(small_cnn, x, torch.tensor([-1, 0]))
    assert c.rows == 0


def test_gradcam_layer_override(small_cnn, gray_batch):
    x, y = gray_batch
    a = explain.get("gradcam", layer="features.3")(small_cnn, x, y)
    b = explain.get("gradcam")(small_cnn, x, y)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_auto_sizes_keep_64x64_defaults_and_bound_passes_at_any_size():
    from xaiscope.explain.perturbation import auto_occlusion, auto_patch

    occ, fa = explain.get("occlusion"), explain.get("feature_ablation")
    assert auto_occlusion((64, 64)) == (8, 4) and auto_patch((64, 64)) == 4  # the defaults sized for 64x64
    assert auto_occlusion((16, 16)) == (8, 4) and auto_occlusion((6, 9)) == (6, 3)  # never above the short side
    assert auto_occlusion((224, 224)) == (28, 14) and auto_patch((224, 224)) == 14
    assert occ.passes((3, 224, 224)) == 1 + 15 * 15 and fa.passes((3, 224, 224)) == 1 + 16 * 16
    assert occ.passes((3, 64, 64)) == 1 + 15 * 15 and fa.passes((1, 64, 64)) == 1 + 16 * 16
    for side in (96, 128, 224, 512, 1024):  # a fixed budget of passes whatever the size
        assert occ.passes((3, side, side)) <= 1 + 16 * 16 and fa.passes((3, side, side)) <= 1 + 17 * 17
    assert occ.passes((1, 48, 56, 48)) <= 1 + 7**3 and fa.passes((1, 48, 56, 48)) <= 1 + 7**3
    assert occ.settled((3, 224, 224))["window"] == 28 and fa.settled((1, 24, 28, 24))["patch"] == 5
    assert explain.get("occlusion", window=5).settled((1, 64, 64))[("stride")] == 2  # stride follows a given window
    assert explain.get("occlusion", window=5, stride=5).passes((1, 20, 20)) == 1 + 4 * 4
    with pytest.raises(MethodError, match="'window' of occlusion must be int or 'auto', got 'big'"):
        explain.get("occlusion", window="big")


def test_auto_sizes_are_what_the_methods_use(small_cnn):
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    for name, fixed in (("occlusion", {"window": 8, "stride": 4}), ("feature_ablation", {"patch": 4})):
        auto = explain.get(name, batch_size=64)
        with count_passes(small_cnn.features[0]) as c:
            a = auto(small_cnn, x, y)
        assert c.rows == auto.passes((1, 24, 24)) * 2
        torch.testing.assert_close(a, explain.get(name, batch_size=64, **fixed)(small_cnn, x, y))

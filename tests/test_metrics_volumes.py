"""Metrics on volumes ``[N, C, D, H, W]``: every metric on a small Conv3d model or its one-sentence
refusal, a one-slice volume scored as its image by a Conv3d twin of the 2D model, pass counts in
voxels and cubes, maps and raw attributions alike, and the 3D pieces (blur, ROAD's stencil, SSIM,
the pointing game's ball) against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fixture_models import conv3d
from metrics_helpers import K, inputs
from xaiscope import evaluate, explain, models
from xaiscope.errors import MetricError
from xaiscope.evaluate import perturbation as P
from xaiscope.evaluate.randomisation import similarity
from xaiscope.evaluate.setlevel import SetLevelScores

SHAPE = (4, 1, 8, 12, 10)  # N, C, D, H, W: 960 voxels; cubes of side 4: 2 x 3 x 3 = 18

#: settings that keep every metric cheap (the same for images and volumes)
CHEAP = {
    "top_k_intersection": {"k": 50},
    "pointing_game": {"tolerance": 1},
    "deletion": {"steps": 5},
    "insertion": {"steps": 5},
    "pixel_flipping": {"features_in_step": 32},
    "region_perturbation": {"patch_size": 4, "regions_evaluation": 10},
    "selectivity": {"patch_size": 4},
    "faithfulness_correlation": {"nr_runs": 10, "subset_size": 40},
    "faithfulness_estimate": {"features_in_step": 32},
    "monotonicity": {"features_in_step": 32},
    "monotonicity_correlation": {"features_in_step": 64, "nr_samples": 2},
    "sensitivity_n": {"features_in_step": 32},
    "irof": {"n_segments": 8},
    "road": {"percentage_step": 20},
    "infidelity": {"patch_size": 4},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},
    "local_lipschitz": {"nr_samples": 3},
    "relative_input_stability": {"nr_samples": 3},
    "relative_output_stability": {"nr_samples": 3},
    "relative_representation_stability": {"nr_samples": 3},
    "continuity": {"nr_steps": 3},
    "smooth_model_parameter_randomisation": {"nr_samples": 2},
    "non_sensitivity": {"features_in_step": 32, "eps": 1e-2},
    "sufficiency": {"threshold": 0.8},
}

#: metrics that refuse volumes, with the start of their sentence (none: emd_score's coarse transport scales)
REFUSE: dict[str, str] = {}


def conv3d_model(channels: int = 1, seed: int = 0) -> nn.Module:
    return conv3d(num_classes=K, in_channels=channels, seed=seed)


def box_masks(n: int, spatial: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(n, *spatial, dtype=torch.bool)
    for i in range(n):
        d, r, c = i % 3, 2 + i % 4, 1 + (i * 3) % 5
        mask[i, d : d + 4, r : r + 5, c : c + 4] = True
    return mask


@pytest.fixture(scope="module")
def volumes():
    net = conv3d_model()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    y = torch.arange(SHAPE[0]) % K
    return net, x, y, explain.get("saliency")(net, x, y), box_masks(SHAPE[0], SHAPE[2:])


def _score(name, net, x, y, a, mask, **hp):
    return evaluate.get(name, **{**CHEAP.get(name, {}), **hp})(
        net, x, y, a, mask=mask, explainer=explain.get("saliency")
    )


# ------------------------------------------------------------------ (a) every metric on volumes
@pytest.mark.parametrize("name", evaluate.names())
def test_every_metric_scores_volumes_or_refuses_in_one_sentence(volumes, name):
    net, x, y, a, mask = volumes
    if name in REFUSE:
        with pytest.raises(MetricError, match=REFUSE[name]) as err:
            _score(name, net, x, y, a, mask)
        msg = str(err.value)
        assert msg.endswith(".") and ". " not in msg and "\n" not in msg
        return
    s = _score(name, net, x, y, a, mask)
    assert s.shape == (SHAPE[0],) and s.dtype == torch.float32 and torch.isfinite(s).all(), s


def test_no_metric_refuses_volumes():
    assert not REFUSE


# ------------------------------------------------------------------ (b) one slice = its image
def lift(net2: nn.Sequential) -> nn.Sequential:
    """The Conv3d twin of ``metrics_helpers.tiny_cnn``: ``(1, 3, 3)`` copies of its kernels and
    ``(1, 2, 2)`` pooling, so on ``x[:, :, None]`` (D = 1) it computes ``net2(x)``."""
    c1, c2, lin = net2[0], net2[3], net2[7]
    net3 = nn.Sequential(
        nn.Conv3d(c1.in_channels, c1.out_channels, (1, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.MaxPool3d((1, 2, 2)),
        nn.Conv3d(c2.in_channels, c2.out_channels, (1, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(lin.in_features, lin.out_features),
    ).eval()
    with torch.no_grad():
        for i in (0, 3):
            net3[i].weight.copy_(net2[i].weight[:, :, None])
            net3[i].bias.copy_(net2[i].bias)
        net3[7].load_state_dict(lin.state_dict())
    return net3


#: metrics whose one-slice volume legitimately scores differently from its image, and why
DIFFER_ON_ONE_SLICE = {
    "emd_score": "its normaliser is the volume's diagonal sqrt(D^2 + H^2 + W^2), which counts the one slice's depth",
    "random_logit": "its default SSIM is 3-D on volumes: a 7x7x7 window does not fit one slice, so the "
    "score is NaN as scikit-image refuses such a volume (with similarity='spearman' it is the image's, below)",
}


@pytest.fixture(scope="module")
def twins():
    net2, x2, y, a2, mask2 = inputs(0)
    net3 = lift(net2)
    x3 = x2[:, :, None]
    with torch.no_grad():
        torch.testing.assert_close(net3(x3), net2(x2), atol=1e-6, rtol=0)
    return (net2, x2, y, a2, mask2), (net3, x3, y, a2[:, :, None], mask2[:, None])


@pytest.mark.parametrize("name", [n for n in evaluate.names() if n not in DIFFER_ON_ONE_SLICE])
def test_one_slice_volume_scores_as_its_image(twins, name):
    s2 = _score(name, *twins[0])
    s3 = _score(name, *twins[1])
    torch.testing.assert_close(s3, s2, atol=1e-5, rtol=0, equal_nan=True)


def test_random_logit_on_one_slice_is_nan_with_ssim_and_the_image_with_spearman(twins):
    assert torch.isnan(_score("random_logit", *twins[1])).all()
    s2 = _score("random_logit", *twins[0], similarity="spearman")
    s3 = _score("random_logit", *twins[1], similarity="spearman")
    torch.testing.assert_close(s3, s2, atol=1e-5, rtol=0)


def test_emd_of_one_slice_is_the_image_transport_over_the_volume_diagonal(twins):
    (_, x2, _, _, _), _ = twins
    h, w = x2.shape[-2:]
    s2, s3 = _score("emd_score", *twins[0]), _score("emd_score", *twins[1])
    d2, d3 = (h * h + w * w) ** 0.5, (1 + h * h + w * w) ** 0.5
    torch.testing.assert_close(1 - s3, (1 - s2) * d2 / d3, atol=1e-6, rtol=0)


def test_one_slice_maps_and_raw_attributions_of_the_twin_are_the_image_ones(twins):
    (net2, x2, y, _, _), (net3, x3, _, _, _) = twins
    for method in ("saliency", "integrated_gradients"):
        ex = explain.get(method)
        torch.testing.assert_close(ex(net3, x3, y)[:, :, 0], ex(net2, x2, y), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ (c) pass counts in voxels
COUNTED = {
    "deletion": ({"steps": 5, "patch_size": 4}, "steps + 1", 6),
    "insertion": ({"steps": 5}, "steps + 1", 6),
    "pixel_flipping": ({"features_in_step": 64}, "ceil(D*H*W / features_in_step)", 15),
    "region_perturbation": (
        {"patch_size": 4},
        "1 + min(ceil(D/patch_size)*ceil(H/patch_size)*ceil(W/patch_size), regions_evaluation)",
        19,
    ),
    "selectivity": ({"patch_size": 4}, "ceil(D/patch_size)*ceil(H/patch_size)*ceil(W/patch_size)", 18),
    "faithfulness_correlation": ({"nr_runs": 7, "subset_size": 40}, "1 + nr_runs", 8),
    "faithfulness_estimate": ({"features_in_step": 100}, "1 + ceil(D*H*W / features_in_step)", 11),
    "monotonicity_correlation": (
        {"features_in_step": 128, "nr_samples": 2},
        "1 + ceil(D*H*W / features_in_step) * nr_samples",
        17,
    ),
    "sensitivity_n": ({"features_in_step": 64}, "1 + floor(n_max_percentage*D*H*W / features_in_step)", 13),
    "road": ({"percentage_step": 25}, "len(range(1, 100, percentage_step))", 4),
    "infidelity": ({"patch_size": 4}, "1 + ceil(D/patch_size)*ceil(H/patch_size)*ceil(W/patch_size)", 19),
    "completeness": ({}, "2", 2),
    "non_sensitivity": ({"features_in_step": 64}, "1 + ceil(D*H*W / features_in_step)", 16),
}


@pytest.mark.parametrize("name", sorted(COUNTED))
def test_counted_passes_are_the_declared_ones_in_voxels(volumes, name):
    net, x, y, a, mask = volumes
    hp, vformula, per_volume = COUNTED[name]
    m = evaluate.get(name, **hp)
    assert m.passes_formula.endswith(f"volumes: {vformula}") or m.passes_formula == vformula, m.passes_formula
    assert m.passes(tuple(x.shape[1:])) == per_volume
    with models.count_passes(net) as c:
        m(net, x, y, a, mask=mask)
    assert c.rows == per_volume * x.shape[0], (c.rows, m.passes_formula)


def test_monotonicity_passes_are_at_most_the_declared_ones_and_exact_on_a_monotone_model(volumes):
    net, x, y, a, _ = volumes
    m = evaluate.get("monotonicity", features_in_step=64, fill="zero", output="logit")
    assert m.passes((1, 8, 12, 10)) == 15 and "volumes: ceil(D*H*W / features_in_step) at most" in m.passes_formula
    with models.count_passes(net) as c:
        m(net, x, y, a)
    assert c.rows <= 15 * x.shape[0]

    class Sum(nn.Module):
        def forward(self, v):
            s = v.flatten(1).sum(1)
            return torch.stack([s, -s], 1)

    total = Sum()
    with models.count_passes(total) as c:
        assert m(total, x, y * 0, x).tolist() == [1.0] * x.shape[0]
    assert c.rows == 15 * x.shape[0]


def test_irof_makes_one_pass_per_supervoxel_and_one_for_the_volume(volumes):
    net, x, y, a, _ = volumes
    m = evaluate.get("irof", n_segments=8)
    units = P.Superpixels().units(x, m.map(a, dims=3), m.hparams)
    with models.count_passes(net) as c:
        m(net, x, y, a)
    assert c.rows == int((1 + units.count).sum())
    assert "volumes: 1 + K (supervoxels, about n_segments)" in m.passes_formula


def test_image_counts_are_unchanged_and_d_is_one_for_images():
    m = evaluate.get("selectivity", patch_size=4)
    assert m.passes((1, 16, 16)) == 16 and m.passes((1, 1, 16, 16)) == 16 and m.passes((1, 8, 16, 16)) == 32
    assert m.passes_formula.startswith("ceil(H/patch_size)*ceil(W/patch_size); volumes: ")
    assert evaluate.get("sufficiency").passes_formula == "1"


# ------------------------------------------------------------------ (d) maps vs raw attributions
#: metrics that read the raw attributions' channels, not only their sum
READS_CHANNELS = {"infidelity": "sum(a * (x - x_t)) over channels differs from sum(map) * sum(x - x_t)"}


@pytest.mark.parametrize("name", [n for n in evaluate.names() if n not in REFUSE and n not in READS_CHANNELS])
def test_maps_and_raw_attributions_of_volumes_score_alike(name):
    net = conv3d_model(channels=2, seed=3)
    x = torch.rand(3, 2, 8, 12, 10, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2])
    raw = explain.get("integrated_gradients", n_steps=4)(net, x, y)
    mask = box_masks(3, (8, 12, 10))
    assert raw.dim() == 5
    s_raw = _score(name, net, x, y, raw, mask)
    s_map = _score(name, net, x, y, raw.sum(1), mask)
    torch.testing.assert_close(s_map, s_raw, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_infidelity_reads_the_channels_of_raw_volume_attributions():
    net = conv3d_model(channels=2, seed=3)
    x = torch.rand(2, 2, 8, 12, 10, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1])
    a = torch.zeros_like(x)
    a[:, 0] = 1.0  # relevance on channel 0 only: the weighted change is the change of channel 0
    m = evaluate.get("infidelity", patch_size=4)
    assert not torch.allclose(m(net, x, y, a), m(net, x, y, a.sum(1)))


def test_a_4d_tensor_is_a_map_of_volumes_and_a_raw_attribution_of_images(volumes):
    net, x, y, a, mask = volumes
    m = a.sum(1)  # [N, D, H, W]
    rma = evaluate.get("relevance_mass_accuracy")
    torch.testing.assert_close(rma(None, x, y, m, mask=mask), rma(None, x, y, a, mask=mask))
    with pytest.raises(MetricError, match=r"needs attributions \[N, C, D, H, W\] or maps \[N, D, H, W\]"):
        rma(None, x, y, m[:, 0], mask=mask)
    with pytest.raises(MetricError, match=r"needs masks \[N, D, H, W\]"):
        rma(None, x, y, a, mask=mask[:, 0])
    several = torch.stack([mask, torch.zeros_like(mask)], 1)  # two annotators: their union
    torch.testing.assert_close(rma(None, x, y, a, mask=several), rma(None, x, y, a, mask=mask))
    with pytest.raises(MetricError, match=r"needs images \[N, C, H, W\] or volumes \[N, C, D, H, W\]"):
        rma(None, x[:, 0, 0], y, a, mask=mask)


def test_set_level_scores_of_volume_maps_are_the_call_on_the_whole_set(volumes):
    net, x, y, a, _ = volumes
    m = evaluate.get("sufficiency", threshold=0.9)
    acc = SetLevelScores(m, x.shape[0], tuple(x.shape[2:]))
    pred = net(x).argmax(1)
    for s in (slice(0, 1), slice(1, 4)):
        acc.update(torch.arange(x.shape[0])[s], a[s], pred[s])
    _, scores = acc.compute()
    torch.testing.assert_close(scores, m(net, x, y, a))
    torch.testing.assert_close(m.set_scores(a.sum(1), pred, dims=3).float(), scores)


# ------------------------------------------------------------------ the 3D pieces
def test_volume_blur_is_a_separable_gaussian_with_mirror_padding():
    from scipy.ndimage import gaussian_filter

    v = torch.rand(2, 2, 9, 11, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = gaussian_filter(v.numpy(), sigma=(0, 0, 1.0, 1.0, 1.0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(P.blur(v, 1.0).numpy(), want, atol=1e-12)


def test_road_volume_stencil_is_the_26_neighbour_binomial_mean():
    w = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = w.view(3, 1, 1) * w.view(1, 3, 1) * w.view(1, 1, 3)
    k[1, 1, 1] = 0
    v = torch.rand(2, 1, 5, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = P.neighbour_mean(v)
    torch.testing.assert_close(got, torch.nn.functional.conv3d(v, (k / 56).view(1, 1, 3, 3, 3), padding=1))
    assert k.sum() == 56 and k[0, 1, 1] == 4 and k[0, 0, 1] == 2 and k[0, 0, 0] == 1


def test_road_imputes_a_linear_volume_exactly_inside():
    # a field linear in d, h, w is its own neighbour mean: a removed interior voxel gets it back
    d, h, w = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), torch.arange(8.0), indexing="ij")
    x = (0.5 * d - 0.25 * h + 0.125 * w)[None, None].double()
    hole = torch.zeros(1, 1, 6, 7, 8, dtype=torch.bool)
    hole[..., 2:4, 2:5, 3:6] = True
    zero = torch.zeros(1, dtype=torch.long)
    got = P.noisy_linear_fill(x, 0.0, 0, tol=1e-12)(x, hole, zero, zero)
    torch.testing.assert_close(got[hole], x[hole], atol=1e-8, rtol=0)


def test_volume_ssim_is_scikit_image_on_volumes():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 8, 12, 10, generator=g, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(3, 8, 12, 10, generator=g, dtype=torch.float64)
    want = []
    for u, v in zip(a.numpy(), b.numpy()):
        want.append(structural_similarity(u, v, data_range=max(u.max(), v.max()) - min(u.min(), v.min())))
    np.testing.assert_allclose(similarity("ssim", a, b).numpy(), want, atol=1e-12)
    assert torch.isnan(similarity("ssim", a[:, :5], b[:, :5])).all()  # thinner than the window


def test_pointing_game_tolerance_is_a_ball_in_volumes():
    x, y0 = torch.rand(1, 1, 7, 7, 7), torch.zeros(1, dtype=torch.long)
    mask = torch.zeros(1, 7, 7, 7, dtype=torch.bool)
    mask[0, 3, 3, 3] = True
    pg = evaluate.get("pointing_game", tolerance=1)
    for at, hit in [((3, 3, 4), 1.0), ((4, 3, 3), 1.0), ((4, 4, 3), 0.0), ((3, 3, 5), 0.0)]:
        a = torch.zeros(1, 7, 7, 7)
        a[(0, *at)] = 1.0
        assert pg(None, x, y0, a, mask=mask).item() == hit, at
    weighted = evaluate.get("pointing_game", weighted=True)(None, x, y0, mask.float(), mask=mask)
    assert math.isclose(weighted.item(), 1 - 1 / 343, rel_tol=1e-6)  # 1 - |s| / (D H W)


def test_patch_grid_pads_every_axis_like_quantus():
    pid, count = P.patch_grid((5, 4, 6), 4, "cpu")
    assert count == 2 * 1 * 2
    ids = pid.view(5, 4, 6)
    # D = 5 pads 3 (1 before, 2 after): the first 3 slices form cube row 0; W = 6 pads 2 (1, 1)
    assert ids[:, 0, 0].tolist() == [0, 0, 0, 2, 2] and ids[0, 0, :].tolist() == [0, 0, 0, 1, 1, 1]
    img, n2 = P.patch_grid((16, 16), 4, "cpu")
    vol, n3 = P.patch_grid((1, 16, 16), 4, "cpu")
    assert n2 == n3 == 16 and torch.equal(img, vol)

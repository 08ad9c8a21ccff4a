"""Global maps and PEPPR on volumes: a volume of depth 1 explained by a model that reads its one
slice gives exactly the 2D results; 3D units, fills and blur; the ``global`` command on NIfTI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaiscope.analyses.global_maps import global_maps
from xaiscope.analyses.peppr import fill_step, n_units, peppr, unit_masks, unit_scores
from xaiscope.data import Dataset
from xaiscope.explain.references import gaussian_blur, reference
from xaiscope.models import build


class OneSlice(nn.Module):
    """Reads the single slice of a depth-1 volume with a 2D model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :, 0])


def _images(n: int = 12):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 12, 12, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :, 2:6, 2:6] += 1.0  # label 1 is brighter in one corner
    return x, y


def test_peppr_on_depth_one_volumes_equals_peppr_on_the_images():
    torch.manual_seed(0)
    net = build("small_cnn", width=4)
    x, y = _images()
    order = torch.rand(12, 12, generator=torch.Generator().manual_seed(1))
    flat = Dataset(x=x, y=y, ids=[str(i) for i in range(12)], classes=["a", "b"])
    vol = Dataset(x=x[:, :, None], y=y, ids=flat.ids, classes=["a", "b"])
    for unit, fill in (("pixel", "black"), ("patch:4", "mean"), ("pixel", "blur")):
        kw = dict(fractions=[0.0, 0.25, 0.5, 1.0], unit=unit, fill=fill, random_orders=2, batch_size=7, blur_sigma=1.0)
        r2 = peppr(net, flat, order, 1, **kw)
        r3 = peppr(OneSlice(net), vol, order[None], 1, **kw)
        assert r2.passes == r3.passes
        for o in r2.orders:
            for curve in ("erasing", "restoration"):
                assert torch.allclose(r2.curves[o][curve]["auroc"], r3.curves[o][curve]["auroc"]), (unit, fill, o)
        assert r2.score == pytest.approx(r3.score)


def test_global_maps_of_volumes_are_per_voxel_means_of_normalised_maps():
    maps = torch.rand(6, 3, 4, 5, generator=torch.Generator().manual_seed(2))  # volume maps [N, D, H, W]
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    g = global_maps(maps, labels, spatial_dims=3)
    m = maps / maps.flatten(1).sum(1).view(-1, 1, 1, 1)
    assert g.label_maps.shape == (2, 3, 4, 5)
    assert torch.allclose(g.label_maps[1], m[labels == 1].mean(0))
    assert torch.allclose(g.label_sd[0], m[labels == 0].std(0, unbiased=False), atol=1e-6)
    raw = maps[:, None].repeat(1, 2, 1, 1, 1) / 2  # raw [N, C, D, H, W]: channels summed first
    assert torch.allclose(global_maps(raw, labels).label_maps, g.label_maps, atol=1e-6)


def test_3d_units_cover_the_volume_and_their_scores_sum_the_map():
    shape, k = (3, 5, 4), 2
    assert n_units(shape, k) == 2 * 3 * 2
    omap = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    scores = unit_scores(omap, k)
    assert scores.numel() == 12 and torch.isclose(scores.sum(), omap.sum())
    assert torch.isclose(scores[0], omap[:2, :2, :2].sum())
    order = torch.argsort(scores, descending=True)
    masks = unit_masks(order, torch.tensor([0, 1, 12]), shape, k)
    assert masks.shape == (3, *shape)
    assert not masks[0].any() and masks[2].all()
    first = int(order[0])
    d, h, w = first // 6, (first // 2) % 3, first % 2
    expected = torch.zeros(shape, dtype=torch.bool)
    expected[2 * d : 2 * d + 2, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2] = True
    assert torch.equal(masks[1], expected)


def test_fills_references_and_blur_in_3d():
    x = torch.rand(2, 2, 4, 6, 5, generator=torch.Generator().manual_seed(4))
    assert fill_step(x, "black", norm=([0.5, 0.1], [2.0, 1.0])).shape == (1, 2, 1, 1, 1)
    assert torch.allclose(reference(x, "mean")[:, :, 0, 0, 0], x.mean(dim=(2, 3, 4)))
    flat = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(gaussian_blur(flat[:, :, None], 1.5)[:, :, 0], gaussian_blur(flat, 1.5), atol=1e-6)
    const = torch.full((1, 1, 5, 6, 7), 3.0)
    assert torch.allclose(gaussian_blur(const, 1.0), const)


def test_global_command_on_nifti_volumes_writes_nifti_maps(tmp_path, capsys):
    from cli_helpers import run_cli
    from test_volume_jobs import nifti_folder
    from xaiscope.data import volumes

    data = nifti_folder(tmp_path / "data", n=3)
    out = tmp_path / "g"
    r = run_cli(
        capsys, "global", "--model", "fixture_models:conv3d", "--data", data, "--method", "saliency",
        "--out", out, "--random-orders", "1", "--step", "0.5", "--unit", "patch:2",
    )  # fmt: skip
    assert r.code == 0, r.out
    z = np.load(out / "global_maps.npz")
    assert z["label_maps"].shape == (2, *volumes.volume_geometry(data / "a" / "a0.nii.gz")[0])
    back, aff = volumes.read_volume(out / "maps" / "b.nii.gz", 10**9)
    assert np.allclose(back[0], z["label_maps"][1], atol=1e-6)
    assert np.allclose(aff, volumes.volume_geometry(data / "a" / "a0.nii.gz")[1])
    assert (out / "maps" / "overall.png").is_file() and (out / "peppr_a.png").is_file()


def test_variability_of_volume_maps_across_a_torchscript_collection(tmp_path, capsys):
    from cli_helpers import assert_user_error, run_cli
    from fixture_models import conv3d
    from test_volume_jobs import nifti_folder
    from xaiscope import explain
    from xaiscope.data import open_source

    data = nifti_folder(tmp_path / "data", n=2)
    coll = tmp_path / "coll"
    coll.mkdir()
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(conv3d().eval())
        torch.jit.script(nets[-1]).save(str(coll / f"m{seed}.ts"))
    out = tmp_path / "v"
    r = run_cli(capsys, "variability", "--collection", coll, "--data", data, "--methods", "saliency",
                "--out", out, "--bootstrap", "5", "--top", "1")  # fmt: skip
    assert r.code == 0, r.out
    z = np.load(out / "maps" / "saliency.npz")
    ds = open_source(data).take()
    maps = []
    for net in nets:
        m = explain.pool(explain.get("saliency")(net, ds.x, ds.y), "sum").abs()
        maps.append(m / m.flatten(1).sum(1).view(-1, 1, 1, 1))
    expected_sd = torch.stack(maps).std(0, unbiased=False)
    assert z["sd_map"].shape == tuple(expected_sd.shape)
    assert np.allclose(z["sd_map"], expected_sd.numpy(), atol=1e-5)
    r = run_cli(capsys, "variability", "--collection", coll, "--data", data, "--methods", "gradcam", "--out", out)
    assert_user_error(r, "the layers of a TorchScript program cannot be hooked")


@pytest.mark.slow
def test_transfer_study_on_the_3d_benchmark_with_generated_sources(tmp_path, capsys):
    import json

    from cli_helpers import assert_user_error, run_cli
    from xaiscope.analyses.transfer import feature_blocks
    from xaiscope.data.benchmark import generate_3d

    assert feature_blocks(build("small_cnn3d")) == ["features.0", "features.3", "features.6"]
    assert feature_blocks(build("small_vgg")) == [f"features.{i}" for i in range(4)]
    generate_3d(tmp_path / "b3", n_train=12, n_test=8, size=(24, 28, 24), radius=(13.0, 19.0))
    out = tmp_path / "t"
    r = run_cli(capsys, "transfer", "--data", tmp_path / "b3", "--arch", "small_cnn3d", "--out", out,
                "--freeze", "0,3", "--seeds", "1", "--methods", "saliency,gradcam", "--epochs", "1",
                "--pretrain-epochs", "1", "--width", "2", "--max-images", "4")  # fmt: skip
    assert r.code == 0, r.out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sources"]) == {"tissue_gm_wm", "confounded"}
    assert '"confounder_rate": 1.0' in summary["sources"]["confounded"]
    import pandas as pd

    runs = pd.read_parquet(out / "runs.parquet")
    assert summary["n_runs"] == 1 + 2 * 2 and set(runs["frozen_blocks"]) == {0, 3}
    scored = runs.dropna(subset=["score"])
    assert scored["score"].between(0, 1).all()  # localisation of volume maps against 3D masks
    r = run_cli(capsys, "transfer", "--data", tmp_path / "b3", "--arch", "small_cnn3d", "--out", out, "--freeze", "4")
    assert_user_error(r, "--freeze 4 is not between 0 and 3")


@pytest.mark.slow
def test_collection_of_small_cnn3d_seeds_and_its_variability(tmp_path, capsys):
    import json

    from cli_helpers import run_cli
    from xaiscope.data.benchmark import generate_3d

    generate_3d(tmp_path / "b3", n_train=8, n_test=4, size=(24, 28, 24), radius=(13.0, 19.0))
    coll = tmp_path / "coll"
    r = run_cli(capsys, "collection", "--data", tmp_path / "b3", "--arch", "small_cnn3d", "--out", coll,
                "--seeds", "2", "--epochs", "1", "--width", "2", "--batch-size", "4")  # fmt: skip
    assert r.code == 0, r.out
    manifest = json.loads((coll / "manifest.json").read_text())
    assert manifest["arch"] == "small_cnn3d" and [m["seed"] for m in manifest["models"]] == [0, 1]
    out = tmp_path / "v"
    r = run_cli(capsys, "variability", "--collection", coll, "--data", tmp_path / "b3" / "test",
                "--methods", "saliency,gradcam", "--out", out, "--bootstrap", "5", "--top", "1")  # fmt: skip
    assert r.code == 0, r.out
    z = np.load(out / "maps" / "gradcam.npz")
    assert z["sd_map"].shape[-3:] == (24, 28, 24) and np.isfinite(z["sd_map"]).all()

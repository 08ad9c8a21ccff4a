"""PEPPR on a hand-built model that reads only a fixed region of an aligned synthetic set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from xaiscope import explain, models
from xaiscope.analyses.global_maps import global_maps
from xaiscope.analyses.peppr import auroc, fill_images, peppr, unit_masks, unit_scores
from xaiscope.data import Dataset
from xaiscope.errors import ConfigError, DataError

H = W = 16


def region(rows, cols) -> torch.Tensor:
    r = torch.zeros(H, W, dtype=torch.bool)
    r[rows, cols] = True
    return r


READ = region(slice(2, 6), slice(2, 6))  # 16 of 256 pixels (6.25%)
WRONG = region(slice(10, 14), slice(10, 14))


class RegionReader(torch.nn.Module):
    """logit_1 - logit_0 = scale * mean of the image inside a fixed region (nothing else is read)."""

    def __init__(self, mask: torch.Tensor, scale: float = 4.0):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        s = (x[:, 0] * self.mask).sum((1, 2)) / self.mask.sum()
        return torch.stack([-s, s], dim=1) * self.scale


def aligned_set(n: int = 60, seed: int = 0) -> Dataset:
    """Noise; class 1 images carry +1 inside the read region (aligned: same place in every image)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 1, H, W, generator=g)
    x[y == 1, 0] += READ.float()
    return Dataset(x=x, y=y, ids=[f"i{i}" for i in range(n)], classes=["a", "b"], source="synthetic")


@pytest.fixture(scope="module")
def setup():
    ds = aligned_set()
    model = RegionReader(READ).eval()
    a = explain.get("saliency")(model, ds.x, ds.y)
    g = global_maps(a, ds.y)
    return ds, model, g


def test_global_map_mass_lies_in_the_read_region(setup):
    _, _, g = setup
    assert g.mass_in(READ) >= 0.8
    assert g.mass_in(READ, label=1) >= 0.8


def test_erasing_and_restoring_top_ten_percent(setup):
    ds, model, g = setup
    fr = [0.0, 0.1, 0.5, 1.0]
    r = peppr(model, ds, g.label_maps[1], 1, fractions=fr, random_orders=5, seed=0)
    i10 = 1
    assert r.curves["map"]["erasing"]["auroc"][0] == pytest.approx(1.0)
    assert r.curves["map"]["erasing"]["auroc"][i10] <= 0.6
    for nm in r.orders:
        if nm.startswith("random:"):
            assert r.curves[nm]["erasing"]["auroc"][i10] >= 0.9
    assert r.curves["map"]["restoration"]["auroc"][i10] >= 0.9
    assert r.curves["map"]["restoration"]["auroc"][0] == pytest.approx(0.5)  # all filled: every score ties


def test_summary_score_positive_and_beats_wrong_region(setup):
    ds, model, g = setup
    right = peppr(model, ds, g.label_maps[1], 1, random_orders=3)
    wrong = peppr(model, ds, WRONG.float(), 1, random_orders=3)
    assert right.score["auroc"] > 0.3
    assert right.score["auroc"] > wrong.score["auroc"]
    assert abs(wrong.score["auroc"]) < 0.15  # a map of an unread region is no better than chance
    assert right.score["accuracy"] > wrong.score["accuracy"]
    # reversed order: least important first, erasing keeps performance for long
    assert right.areas["reversed"]["erasing"]["auroc"] > right.areas["map"]["erasing"]["auroc"]


def test_pass_count_and_batch_size_invariance(setup):
    ds, model, g = setup
    fr = [0.0, 0.05, 0.1, 0.2, 1.0]
    with models.count_passes(model) as count:
        r1 = peppr(
            model,
            ds,
            g.label_maps[1],
            1,
            fractions=fr,
            random_orders=2,
            other_maps={0: g.label_maps[0]},
            batch_size=256,
        )
    n_orders = 1 + 1 + 2 + 1
    assert r1.passes == 2 * len(ds) + n_orders * 2 * 3 * len(ds)
    assert count.rows == r1.passes
    assert count.largest_call <= 256
    assert count.calls < r1.passes / 60  # several steps share one call
    r2 = peppr(
        model, ds, g.label_maps[1], 1, fractions=fr, random_orders=2, other_maps={0: g.label_maps[0]}, batch_size=7
    )
    for nm in r1.orders:
        for c in ("erasing", "restoration"):
            torch.testing.assert_close(r1.curves[nm][c]["auroc"], r2.curves[nm][c]["auroc"])
            torch.testing.assert_close(r1.curves[nm][c]["accuracy"], r2.curves[nm][c]["accuracy"])


def test_random_orders_are_seeded(setup):
    ds, model, g = setup
    a = peppr(model, ds, g.label_maps[1], 1, fractions=[0, 0.3, 1], random_orders=2, seed=5)
    b = peppr(model, ds, g.label_maps[1], 1, fractions=[0, 0.3, 1], random_orders=2, seed=5)
    assert a.orders == ["map", "reversed", "random:5", "random:6"]
    torch.testing.assert_close(
        a.random["curves"]["mean"]["erasing"]["auroc"], b.random["curves"]["mean"]["erasing"]["auroc"]
    )


def test_areas_are_trapezoids(setup):
    ds, model, g = setup
    fr = [0.0, 0.25, 1.0]
    r = peppr(model, ds, g.label_maps[1], 1, fractions=fr, random_orders=1)
    c = r.curves["map"]["erasing"]["accuracy"].numpy()
    assert r.areas["map"]["erasing"]["accuracy"] == pytest.approx(np.trapezoid(c, fr))
    rows = r.summary()
    assert rows[0]["order"] == "map"
    assert rows[0]["score_auroc"] == pytest.approx(r.score["auroc"])


def test_auroc_matches_sklearn_with_ties():
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 5, (4, 40), generator=g).double()
    pos = torch.rand(40, generator=g) > 0.4
    ours = auroc(s, pos)
    for t in range(4):
        assert float(ours[t]) == pytest.approx(roc_auc_score(pos.numpy(), s[t].numpy()))


def test_patch_units():
    m = torch.zeros(5, 5)
    m[4, 4] = 10.0  # the corner patch (a single pixel at the edge) is the most important unit
    m[0, 0] = 1.0
    sc = unit_scores(m, 2)
    assert sc.shape == (9,)
    assert int(sc.argmax()) == 8
    order = torch.sort(sc, descending=True, stable=True).indices
    masks = unit_masks(order, torch.tensor([0, 1, 2, 9]), (5, 5), 2)
    assert masks.shape == (4, 5, 5)
    assert masks[0].sum() == 0 and masks[1].sum() == 1 and bool(masks[1, 4, 4])
    assert masks[2].sum() == 5 and bool(masks[2, 0, 0]) and bool(masks[2, 1, 1])
    assert bool(masks[3].all())


def test_fills():
    ds = aligned_set(4)
    assert fill_images(ds, "black").abs().max() == 0
    ds.mean, ds.std = [0.5], [0.25]
    torch.testing.assert_close(fill_images(ds, "black").flatten(), torch.tensor([-2.0]))
    torch.testing.assert_close(fill_images(ds, "mean").flatten(), ds.x.mean().view(1))
    assert fill_images(ds, "blur", sigma=1.0).shape == ds.x.shape


def test_blur_fill_and_patch_unit_run(setup):
    ds, model, g = setup
    r = peppr(model, ds, g.label_maps[1], 1, fractions=[0, 0.1, 1], fill="blur", unit="patch:4", random_orders=1)
    assert r.curves["map"]["erasing"]["auroc"].shape == (3,)


def test_errors(setup):
    ds, model, g = setup
    with pytest.raises(DataError, match="shape"):
        peppr(model, ds, torch.zeros(8, 8), 1)
    with pytest.raises(ConfigError, match="unit"):
        peppr(model, ds, g.label_maps[1], 1, unit="patch:x")
    with pytest.raises(ConfigError, match="fill"):
        peppr(model, ds, g.label_maps[1], 1, fill="noise")
    with pytest.raises(ConfigError, match="not a class"):
        peppr(model, ds, g.label_maps[1], 2)
    with pytest.raises(DataError, match="other labels"):
        peppr(model, ds.subset(torch.arange(0, 60, 2)), g.label_maps[1], 1)
    with pytest.raises(ConfigError, match="increasing"):
        peppr(model, ds, g.label_maps[1], 1, fractions=[0.5, 0.2])

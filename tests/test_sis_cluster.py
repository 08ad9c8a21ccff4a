"""Energy distance between SIS pixel sets and DBSCAN clustering."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import energy_distance as scipy_energy

from xaiscope.analyses.sis import cluster, energy_distances
from xaiscope.errors import ConfigError


def mask_of(points, shape=(8, 8)):
    m = torch.zeros(shape, dtype=torch.bool)
    for h, w in points:
        m[h, w] = True
    return m


def test_energy_distance_closed_form():
    a = mask_of([(0, 0)])
    b = mask_of([(3, 4)])  # 5 pixels away: D^2 = 2 * 5
    c = mask_of([(0, 0), (0, 2)])
    d = mask_of([(0, 1)])  # E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0 -> D^2 = 1
    d2 = energy_distances([a, b, c, d], squared=True)
    assert d2[0, 1] == pytest.approx(10.0)
    assert d2[2, 3] == pytest.approx(1.0)
    assert torch.allclose(energy_distances([a, b, c, d]), d2.sqrt())
    assert torch.equal(d2, d2.T) and (d2.diagonal() == 0).all()


def test_energy_distance_matches_scipy_on_one_row():
    g = torch.Generator().manual_seed(0)
    masks = [torch.zeros(8, 8, dtype=torch.bool) for _ in range(5)]
    for m in masks:
        cols = torch.randperm(8, generator=g)[: int(torch.randint(1, 6, (1,), generator=g))]
        m[3, cols] = True
    d = energy_distances(masks)
    for i in range(5):
        for j in range(5):
            u = masks[i][3].nonzero().flatten().double().numpy()
            v = masks[j][3].nonzero().flatten().double().numpy()
            assert float(d[i, j]) == pytest.approx(scipy_energy(u, v), abs=1e-9)


def test_grid_and_pairs_algorithms_agree():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 10, 12, generator=g) < 0.2
    masks[:, 0, 0] = True
    assert torch.allclose(energy_distances(masks, algorithm="grid"), energy_distances(masks, algorithm="pairs"))


def two_groups():
    """Three SIS near the top-left corner and three near the bottom-right one."""
    tl = [mask_of([(0, 0), (0, 1)]), mask_of([(1, 0), (1, 1)]), mask_of([(0, 0), (1, 1)])]
    br = [mask_of([(7, 7), (6, 7)]), mask_of([(7, 6), (6, 6)]), mask_of([(7, 7)])]
    return tl + br


def test_dbscan_finds_the_two_groups_with_means_and_source_shares():
    masks = two_groups()
    images = [m.float()[None] * (i + 1) for i, m in enumerate(masks)]
    sources = ["model_a", "model_a", "model_b", "model_b", "model_b", "model_b"]
    res = cluster(masks, eps=2.0, min_samples=2, sources=sources, images=images)
    assert res.labels == [0, 0, 0, 1, 1, 1] and res.noise == []
    c0, c1 = res.clusters
    assert c0.members == [0, 1, 2] and c1.members == [3, 4, 5]
    assert c0.counts == {"model_a": 2, "model_b": 1}
    assert c0.shares == pytest.approx({"model_a": 2 / 3, "model_b": 1 / 3})
    assert c1.shares == {"model_a": 0.0, "model_b": 1.0}
    assert c0.source_fraction == {"model_a": 1.0, "model_b": 0.25}
    assert c1.source_fraction == {"model_a": 0.0, "model_b": 0.75}
    assert torch.allclose(c0.mean_mask, torch.stack(masks[:3]).double().mean(0))
    assert torch.allclose(c1.mean_image, torch.stack(images[3:]).mean(0))
    s = res.summary()
    assert s["n_clusters"] == 2 and s["clusters"][1]["members"] == [3, 4, 5]


def test_dbscan_noise_and_eps_scale():
    masks = two_groups()
    res = cluster(masks, eps=0.5, min_samples=2)
    assert res.clusters == [] and res.noise == list(range(6))
    res = cluster(masks, eps=100.0, min_samples=2)
    assert res.labels == [0] * 6
    # eps applies to D, not D^2: two single pixels 2 apart have D = 2 (D^2 = 4).
    pair = [mask_of([(0, 0)]), mask_of([(0, 2)])]
    assert cluster(pair, eps=2.01, min_samples=2).labels == [0, 0]
    assert cluster(pair, eps=1.99, min_samples=2).labels == [-1, -1]
    assert cluster(pair, eps=4.01, min_samples=2, squared=True).labels == [0, 0]
    assert math.isclose(float(energy_distances(pair)[0, 1]), 2.0)


def test_cluster_errors():
    with pytest.raises(ConfigError, match=r"no SIS to cluster"):
        cluster([], eps=1.0)
    with pytest.raises(ConfigError, match=r"eps must be a positive number"):
        cluster(two_groups(), eps=0)
    with pytest.raises(ConfigError, match=r"min_samples must be a positive integer"):
        cluster(two_groups(), eps=1.0, min_samples=0)
    with pytest.raises(ConfigError, match=r"SIS number 1 is empty"):
        cluster([mask_of([(0, 0)]), mask_of([])], eps=1.0)
    with pytest.raises(ConfigError, match=r"3 source labels were given for 6 SIS"):
        cluster(two_groups(), eps=1.0, sources=["a", "b", "c"])

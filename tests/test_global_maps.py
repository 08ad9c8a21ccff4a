"""Global label-wise maps: hand-computed answers for every aggregation choice."""

from __future__ import annotations

import pytest
import torch

from xaiscope.analyses.global_maps import global_maps, per_image_maps
from xaiscope.errors import ConfigError, DataError

MAPS = torch.tensor(
    [
        [[1.0, -1.0], [0.0, 2.0]],  # label 0, |.| sums to 4
        [[2.0, 0.0], [0.0, 2.0]],  # label 0, sums to 4
        [[0.0, 0.0], [3.0, 1.0]],  # label 1, sums to 4
    ]
)
LABELS = torch.tensor([0, 0, 1])


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=1e-7, rtol=0)


def test_absolute_sum_to_one_true_labels():
    g = global_maps(MAPS, LABELS)
    close(g.label_maps[0], [[0.375, 0.125], [0.0, 0.5]])
    close(g.label_maps[1], [[0.0, 0.0], [0.75, 0.25]])
    # each label weighs the same: not the image-weighted mean (which would be 2:1)
    close(g.overall, [[0.1875, 0.0625], [0.375, 0.375]])
    close(g.label_sd[0], [[0.125, 0.125], [0.0, 0.0]])  # population SD of two values = |a-b|/2
    close(g.label_sd[1], torch.zeros(2, 2))
    assert g.counts.tolist() == [2, 1]
    assert g.groups.tolist() == [0, 0, 1]


def test_overall_sd_is_population_sd_over_all_images():
    g = global_maps(MAPS, LABELS)
    m = per_image_maps(MAPS)
    close(g.overall_sd, m.std(0, unbiased=False))
    close(g.overall_sd[1, 0], (torch.tensor([0.0, 0.0, 0.75]).std(unbiased=False)))


def test_signed_aggregation_keeps_signs():
    g = global_maps(MAPS, LABELS, signed=True)
    close(g.label_maps[0], [[0.375, -0.125], [0.0, 0.5]])
    close(g.label_sd[0], [[0.125, 0.125], [0.0, 0.0]])


def test_max_and_no_normalisation():
    g = global_maps(MAPS, LABELS, normalise="max")
    close(g.label_maps[0], [[0.75, 0.25], [0.0, 1.0]])
    close(g.label_maps[1], [[0.0, 0.0], [1.0, 1 / 3]])
    g = global_maps(MAPS, LABELS, normalise="none")
    close(g.label_maps[0], [[1.5, 0.5], [0.0, 2.0]])
    close(g.label_maps[1], [[0.0, 0.0], [3.0, 1.0]])


def test_sum_to_one_makes_each_image_weigh_the_same():
    scaled = MAPS.clone()
    scaled[0] *= 1000.0  # a map on a larger scale does not dominate the label map
    close(global_maps(scaled, LABELS).label_maps[0], global_maps(MAPS, LABELS).label_maps[0])
    assert not torch.allclose(
        global_maps(scaled, LABELS, normalise="none").label_maps[0],
        global_maps(MAPS, LABELS, normalise="none").label_maps[0],
    )


def test_grouping_by_predicted_label():
    g = global_maps(MAPS, LABELS, by="pred", preds=torch.tensor([1, 0, 1]))
    close(g.label_maps[0], [[0.5, 0.0], [0.0, 0.5]])
    close(g.label_maps[1], [[0.125, 0.125], [0.375, 0.375]])
    assert g.counts.tolist() == [1, 2]


def test_raw_attributions_are_channel_summed():
    raw = torch.stack([MAPS / 2, MAPS / 2], dim=1)  # [N, 2, H, W], sums to MAPS
    close(global_maps(raw, LABELS).label_maps, global_maps(MAPS, LABELS).label_maps)


def test_label_without_images_is_zero_and_left_out_of_overall():
    g = global_maps(MAPS, LABELS, num_classes=3)
    assert g.counts.tolist() == [2, 1, 0]
    close(g.label_maps[2], torch.zeros(2, 2))
    close(g.overall, [[0.1875, 0.0625], [0.375, 0.375]])


def test_mass_in_region():
    g = global_maps(MAPS, LABELS)
    region = torch.tensor([[False, False], [True, True]])
    assert g.mass_in(region, label=1) == pytest.approx(1.0)
    assert g.mass_in(region, label=0) == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ConfigError, match="preds"):
        global_maps(MAPS, LABELS, by="pred")
    with pytest.raises(ConfigError, match="by must be"):
        global_maps(MAPS, LABELS, by="both")
    with pytest.raises(ConfigError, match="normalisation 'p99'"):
        global_maps(MAPS, LABELS, normalise="p99")
    with pytest.raises(DataError, match="3 maps but 2 labels"):
        global_maps(MAPS, LABELS[:2])

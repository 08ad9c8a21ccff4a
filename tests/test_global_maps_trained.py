"""Global maps and PEPPR of a model trained on the aligned benchmark, through the CLI (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cli_helpers import exit_code
from xaiscope import models
from xaiscope.analyses.global_maps import GlobalMaps, global_maps
from xaiscope.data.benchmark import generate
from xaiscope.run.inputs import open_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    generate(root / "bench", n_train=400, n_test=120, size=32, aligned=True, alpha=0.8, seed=0)
    code = exit_code(
        [
            "train",
            "--data",
            str(root / "bench"),
            "--out",
            str(root / "model.pt"),
            "--epochs",
            "6",
            "--arch",
            "small_vgg",
            "--width",
            "4",
            "--lr",
            "0.001",
            "--seed",
            "0",
        ]
    )
    assert code == 0
    code = exit_code(
        [
            "global",
            "--model",
            str(root / "model.pt"),
            "--data",
            str(root / "bench" / "test"),
            "--method",
            "integrated_gradients",
            "--param",
            "integrated_gradients.n_steps=16",
            "--out",
            str(root / "global"),
            "--random-orders",
            "3",
            "--step",
            "0.1",
        ]
    )
    assert code == 0
    return root


def test_integrated_gradients_global_map_puts_more_mass_in_lesion_regions_than_random(trained):
    model, ds, _ = open_inputs(str(trained / "model.pt"), trained / "bench" / "test")
    acc = float((models.forward(model, ds.x).argmax(1) == ds.y).float().mean())
    with np.load(trained / "global" / "global_maps.npz") as z:  # written by `xaiscope global` in the fixture
        g = GlobalMaps(
            label_maps=torch.from_numpy(z["label_maps"]),
            label_sd=torch.from_numpy(z["label_sd"]),
            overall=torch.from_numpy(z["overall"]),
            overall_sd=torch.from_numpy(z["overall_sd"]),
            counts=torch.from_numpy(z["counts"]),
            groups=ds.y,
            settings={},
        )
    assert acc >= 0.8  # the model has learned the task (about 0.92 on this machine)
    rnd = global_maps(torch.rand(len(ds), *ds.x.shape[2:], generator=torch.Generator().manual_seed(0)), ds.y)
    for lab in range(2):
        region = ds.masks[ds.y == lab].any(0)  # pixels where label-l lesions occur (its band)
        freq = ds.masks[ds.y == lab].float().mean(0)  # how often each pixel is lesion
        ours, chance = g.mass_in(region, lab), rnd.mass_in(region, lab)
        ours_f = float((g.label_maps[lab] * freq).sum())
        chance_f = float((rnd.label_maps[lab] * freq).sum())
        print(
            f"label {lab}: test acc {acc:.3f}; mass in lesion band IG {ours:.3f} vs random {chance:.3f}; "
            f"lesion-frequency-weighted IG {ours_f:.4f} vs random {chance_f:.4f}"
        )
        assert ours > chance
        assert ours_f > chance_f


def test_global_command_writes_maps_curves_and_summary(trained):
    out = trained / "global"
    for name in (
        "global_maps.npz",
        "maps/overall.png",
        "maps/0_regular.png",
        "maps/1_irregular.png",
        "peppr_curves.csv",
        "peppr_0_regular.png",
        "summary.csv",
        "summary.json",
    ):
        assert (out / name).exists(), name
    with np.load(out / "global_maps.npz") as z:
        assert z["label_maps"].shape == (2, 32, 32)
        np.testing.assert_allclose(z["label_maps"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
        np.testing.assert_allclose(z["overall"], z["label_maps"].mean(0), rtol=1e-5)
    curves = pd.read_csv(out / "peppr_curves.csv")
    assert set(curves["curve"]) == {"erasing", "restoration"}
    assert curves["fraction"].nunique() == 11
    summary = json.loads((out / "summary.json").read_text())
    for cls in ("0_regular", "1_irregular"):
        info = summary["peppr"][cls]
        print(
            f"{cls}: PEPPR score AUROC {info['score_auroc']:.3f}, accuracy {info['score_accuracy']:.3f}; "
            f"map erase/restore AUROC areas {info['areas']['map']['erasing']['auroc']:.3f}/"
            f"{info['areas']['map']['restoration']['auroc']:.3f}; random "
            f"{info['random_areas']['mean']['erasing']['auroc']:.3f}/{info['random_areas']['mean']['restoration']['auroc']:.3f}"
        )
        # passes: 2N + (map, reversed, 3 random, 1 other) * 2 curves * 9 inner fractions * N
        assert info["passes"] == 2 * 120 + 6 * 2 * 9 * 120

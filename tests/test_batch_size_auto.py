"""``--batch-size auto``: images per model call chosen by timing the model on the data."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from torch import nn

from cli_helpers import assert_user_error, run_cli
from test_cli_explain import _folder
from xaiscope.models.tune import best_batch_size


class SleepyNet(nn.Module):
    """Two outputs; each call sleeps ``fixed + per_square * B^2`` seconds for a batch of B."""

    def __init__(self, fixed: float, per_square: float):
        super().__init__()
        self.fixed, self.per_square = fixed, per_square
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(self.fixed + self.per_square * x.shape[0] ** 2)
        return self.lin(x.flatten(1)[:, :4])


def test_fixed_cost_per_call_favours_the_largest_candidate():
    x = torch.rand(3, 1, 2, 2)
    assert best_batch_size(SleepyNet(0.01, 0.0), x, candidates=(1, 2, 8), images=8) == 8


def test_cost_growing_faster_than_the_batch_favours_the_smallest():
    # sleeps large against scheduling jitter on a loaded machine: 40 ms for B=1 against 80 ms for B=2
    x = torch.rand(3, 1, 2, 2)
    assert best_batch_size(SleepyNet(0.0, 0.005), x, candidates=(1, 2, 8), images=8) == 1


def test_tuning_restores_the_training_mode_and_answers_a_candidate():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).train()
    bs = best_batch_size(net, torch.rand(5, 1, 8, 8), candidates=(2, 4, 16), images=16)
    assert bs in (2, 4, 16) and net.training


def test_explain_with_auto_batch_size_records_the_choice(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "out"
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--methods",
        "saliency",
        "--out",
        out,
        "--overlays",
        "0",
        "--batch-size",
        "auto",
    )
    assert r.code == 0, r.err
    import numpy as np

    with np.load(out / "saliency.npz") as z:
        assert z["attributions"].shape == (6, 1, 16, 16)
    assert _recorded_batch_size(out / "saliency.npz") in (4, 8, 16, 32, 64, 128, 256)


def test_evaluate_with_auto_batch_size_keeps_a_setting_given_per_metric(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "res.parquet"
    r = run_cli(
        capsys,
        "evaluate",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--methods",
        "saliency",
        "--metrics",
        "deletion,sparseness,pixel_flipping",
        "--out",
        out,
        "--batch-size",
        "auto",
        "-p",
        "deletion.steps=4",
        "-p",
        "deletion.batch_size=3",
        "-p",
        "pixel_flipping.features_in_step=64",
    )
    assert r.code == 0, r.err
    df = pd.read_parquet(out)
    settings = {m: json.loads(df[df.metric == m].iloc[0].settings)["metric"] for m in ("deletion", "pixel_flipping")}
    assert settings["deletion"]["batch_size"] == 3
    assert settings["pixel_flipping"]["batch_size"] in (4, 8, 16, 32, 64, 128, 256)


@pytest.mark.parametrize("value", ["0", "many", "-3", "2.5"])
def test_bad_batch_size_is_one_sentence(tmp_path, capsys, value):
    data = _folder(tmp_path / "data")
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--methods",
        "saliency",
        "--out",
        tmp_path / "o",
        "--batch-size",
        value,
    )
    assert_user_error(r, r"--batch-size must be a whole number >= 1 or 'auto'")
    assert not (tmp_path / "o").exists()


def _recorded_batch_size(path) -> int:
    import re

    import numpy as np

    with np.load(path) as z:
        return int(re.search(r"'batch_size': (\d+)", str(z["hparams"])).group(1))


@pytest.mark.parametrize("batch_size", ["5", "auto"])
def test_batch_size_given_per_method_wins(tmp_path, capsys, batch_size):
    data = _folder(tmp_path / "data")
    out = tmp_path / "out"
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--methods",
        "saliency,input_x_gradient",
        "--out",
        out,
        "--overlays",
        "0",
        "--batch-size",
        batch_size,
        "-p",
        "saliency.batch_size=2",
    )
    assert r.code == 0, r.err
    assert _recorded_batch_size(out / "saliency.npz") == 2
    other = _recorded_batch_size(out / "input_x_gradient.npz")
    assert other == 5 if batch_size == "5" else other in (4, 8, 16, 32, 64, 128, 256)

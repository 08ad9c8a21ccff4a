"""`xaiscope collection` (resumable) and `xaiscope variability` end to end, plus their user errors."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from cli_helpers import exit_code
from xaiscope.commands.collection_job import model_files, parse_seeds
from xaiscope.data.benchmark import generate
from xaiscope.errors import ConfigError


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    generate(root / "bench", n_train=120, n_test=24, size=32, aligned=True, alpha=0.8, seed=1)
    args = ["collection", "--data", str(root / "bench"), "--out", str(root / "coll"), "--epochs", "1", "--width", "4"]
    assert exit_code([*args, "--seeds", "2"]) == 0
    return root, args


@pytest.mark.slow
def test_collection_is_resumable_and_refuses_other_settings(collection, capsys):
    root, args = collection
    coll = root / "coll"
    before = {p.name: p.stat().st_mtime_ns for p in coll.glob("seed_*.pt")}
    assert sorted(before) == ["seed_0000.pt", "seed_0001.pt"]
    assert exit_code([*args, "--seeds", "3"]) == 0
    manifest = json.loads((coll / "manifest.json").read_text())
    assert [m["seed"] for m in manifest["models"]] == [0, 1, 2]
    assert [m["status"] for m in manifest["models"]] == ["kept", "kept", "trained"]
    assert {p.name: p.stat().st_mtime_ns for p in coll.glob("seed_000[01].pt")} == before  # not retrained
    assert manifest["training"]["epochs"] == 1 and manifest["arch"] == "small_cnn"
    assert all(0 <= m["test_acc"] <= 1 for m in manifest["models"])
    capsys.readouterr()
    assert exit_code([*args[:-4], "--epochs", "2", "--width", "4", "--seeds", "3"]) == 2
    assert "different training" in capsys.readouterr().err


@pytest.mark.slow
def test_variability_command_writes_table_maps_fits_and_plots(collection):
    root, _ = collection
    out = root / "var"
    code = exit_code(
        [
            "variability",
            "--collection",
            str(root / "coll"),
            "--data",
            str(root / "bench" / "test"),
            "--methods",
            "gradcam,saliency",
            "--out",
            str(out),
            "--foreground",
            "masks",
            "--bootstrap",
            "50",
            "--top",
            "2",
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "variability.parquet")
    assert len(table) == 2 * 24 and set(table["method"]) == {"gradcam", "saliency"}
    for col in (
        "id",
        "label",
        "correct_mean",
        "correct_sd",
        "prob_mean",
        "prob_sd",
        "attention_sd",
        "attention_sd_fg",
        "spearman_mean",
    ):
        assert col in table.columns
    mu = table["correct_mean"]
    assert ((table["correct_sd"] - (mu * (1 - mu)) ** 0.5).abs() < 1e-9).all()  # population SD of 0/1
    fits = json.loads((out / "fits.json").read_text())
    assert set(fits["gradcam"]) == {"quadratic_vs_mean_accuracy", "linear_vs_accuracy_sd"}
    assert (out / "plots" / "gradcam.png").exists() and (out / "maps" / "saliency.npz").exists()
    assert len(list((out / "maps" / "gradcam").glob("most_stable_*.png"))) == 2
    assert len(list((out / "maps" / "gradcam").glob("least_stable_*.png"))) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passes"]["saliency"] == len(summary["models"]) * (1 + 1) * 24


@pytest.mark.slow
def test_a_folder_of_own_models_without_manifest(collection, tmp_path):
    root, _ = collection
    own = tmp_path / "own"
    own.mkdir()
    for p in sorted((root / "coll").glob("seed_000[01].*")):
        shutil.copy(p, own / p.name.replace("seed_", "mine_"))
    assert [p.name for p in model_files(own)] == ["mine_0000.pt", "mine_0001.pt"]
    code = exit_code(
        [
            "variability",
            "--collection",
            str(own),
            "--data",
            str(root / "bench" / "test"),
            "--methods",
            "saliency",
            "--out",
            str(tmp_path / "v"),
            "--bootstrap",
            "0",
            "--top",
            "1",
        ]
    )
    assert code == 0
    assert len(pd.read_parquet(tmp_path / "v" / "variability.parquet")) == 24


def test_user_errors(tmp_path, capsys):
    assert (
        exit_code(
            [
                "variability",
                "--collection",
                str(tmp_path / "nope"),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        exit_code(
            [
                "variability",
                "--collection",
                str(tmp_path / "empty"),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "holds no models" in capsys.readouterr().err
    assert (
        exit_code(
            [
                "variability",
                "--collection",
                str(tmp_path / "empty"),
                "--data",
                str(tmp_path),
                "--methods",
                "gradcamm",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "did you mean 'gradcam'" in capsys.readouterr().err
    assert (
        exit_code(
            [
                "global",
                "--model",
                "small_cnn",
                "--data",
                str(tmp_path),
                "--method",
                "saliency",
                "--by",
                "both",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--by must be" in capsys.readouterr().err
    assert exit_code(["collection", "--data", str(tmp_path), "--out", str(tmp_path / "c"), "--seeds", "x"]) == 2
    assert "--seeds must be" in capsys.readouterr().err


def test_parse_seeds():
    assert parse_seeds(3) == [0, 1, 2]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("3,7,11") == [3, 7, 11]
    assert parse_seeds("2-4") == [2, 3, 4]
    with pytest.raises(ConfigError):
        parse_seeds("1,1")

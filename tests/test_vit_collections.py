"""Collections of timm vision transformers trained with seeds, and their explanation variability."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cli_helpers import exit_code
from xaiscope.data.benchmark import generate

pytest.importorskip("timm")

VIT = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=1,embed_dim=12,num_heads=2"


def test_a_collection_of_timm_vits_trains_per_seed_and_feeds_variability(tmp_path):
    generate(tmp_path / "bench", n_train=24, n_test=8, size=32, aligned=True, alpha=0.8, seed=2)
    args = ["collection", "--data", tmp_path / "bench", "--out", tmp_path / "coll", "--arch", VIT, "--epochs", "1"]
    assert exit_code([*args, "--seeds", "2"]) == 0
    manifest = json.loads((tmp_path / "coll" / "manifest.json").read_text())
    assert manifest["arch"] == VIT and "width" not in manifest["arch_kwargs"]
    assert [m["seed"] for m in manifest["models"]] == [0, 1]
    w0, w1 = (tmp_path / "coll" / f"seed_000{i}.pt" for i in (0, 1))
    assert w0.read_bytes() != w1.read_bytes()  # other seeds, other weights
    out = tmp_path / "var"
    methods = "attention_rollout,saliency"
    code = exit_code(
        [
            "variability",
            "--collection",
            tmp_path / "coll",
            "--data",
            tmp_path / "bench" / "test",
            "--methods",
            methods,
            "--out",
            out,
            "--bootstrap",
            "20",
            "--top",
            "1",
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "variability.parquet")
    assert set(table["method"]) == {"attention_rollout", "saliency"} and len(table) == 2 * 8


def test_an_unknown_architecture_names_the_zoo_and_the_specs(tmp_path, capsys):
    generate(tmp_path / "bench", n_train=8, n_test=4, size=32, seed=0)
    code = exit_code(["collection", "--data", tmp_path / "bench", "--out", tmp_path / "c", "--arch", "vit_tiny"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Unknown architecture 'vit_tiny'" in err and "timm:NAME" in err

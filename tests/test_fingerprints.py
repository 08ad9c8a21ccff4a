"""A run's results belong to its inputs: seeded random weights, fingerprints, no stale reuse.

A run folder written from one model and one set of images must never serve its numbers
for another: a model retrained in place, an image or mask changed in place, an image
added. Each case checks the one sentence the user sees (exit 2, nothing written), that
``--refresh`` recomputes exactly the stale units (counted), and that the refreshed run
equals a fresh run of the same inputs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cli_helpers import assert_user_error, run_cli
from reliability_helpers import make_folder, make_npz, snapshot, write_png
from xaiscope import models
from xaiscope.commands.run_job import run
from xaiscope.run.config import parse_config
from xaiscope.run.store import RunStore

HASH = "[0-9a-f]{8}…"


# ----------------------------------------------------------------------------- seeded weights


@pytest.mark.parametrize("spec", ["small_cnn", "torchvision:resnet18", "xaiscope.models.zoo:small_vgg"])
def test_random_weight_specs_are_seeded_and_leave_the_global_random_state_alone(spec):
    state = torch.get_rng_state()
    a = models.load(spec, num_classes=3, in_channels=1, seed=7)
    b = models.load(spec, num_classes=3, in_channels=1, seed=7)
    c = models.load(spec, num_classes=3, in_channels=1, seed=8)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert models.weights_hash(a) == models.weights_hash(b)
    assert models.weights_hash(a) != models.weights_hash(c)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert models.random_weights(spec) and not models.random_weights(spec, weights="w.pt")


def test_weights_hash_sees_every_value_dtype_and_name_and_survives_a_round_trip(tmp_path):
    net = models.load("small_cnn", seed=0)
    h = models.weights_hash(net)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert models.weights_hash(torch.load(tmp_path / "w.pt", weights_only=True)) == h
    assert models.weights_hash(models.load("small_cnn", weights=tmp_path / "w.pt", seed=5)) == h
    state = net.state_dict()
    one = {k: v.clone() for k, v in state.items()}
    one["classifier.bias"][0] = torch.nextafter(one["classifier.bias"][0], torch.tensor(1.0))  # one ulp
    assert models.weights_hash(one) != h
    assert models.weights_hash({k: v.double() for k, v in state.items()}) != h
    renamed = {("x." + k if k == "classifier.bias" else k): v for k, v in state.items()}
    assert models.weights_hash(renamed) != h


def _random_cfg(npz, out, seed=0):
    return parse_config(
        {
            "out": str(out),
            "seed": seed,
            "unit_images": 4,
            "batch_size": 8,
            "data": {"path": str(npz)},
            "models": [{"name": "cnn", "spec": "small_cnn"}, {"name": "resnet", "spec": "torchvision:resnet18"}],
            "methods": ["saliency", "gradcam"],
            "metrics": ["relevance_mass_accuracy", {"name": "max_sensitivity", "hparams": {"nr_samples": 2}}],
            "analyses": {"ranking": None, "sensitivity": None},
        }
    )


def test_the_same_config_with_random_weight_specs_gives_identical_results(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n=8)
    first = RunStore(run(_random_cfg(npz, tmp_path / "a")))
    torch.manual_seed(123)  # whatever the global random state, the run draws the same weights
    second = RunStore(run(_random_cfg(npz, tmp_path / "b")))
    pd.testing.assert_frame_equal(first.results(), second.results(), check_exact=True)
    assert first.results()["value"].notna().mean() > 0.5  # numbers, not only NaN (a 1x1 ResNet grad-CAM is constant)
    for method in ("saliency", "gradcam"):
        np.testing.assert_array_equal(
            first.attributions("resnet", method, "default"), second.attributions("resnet", method, "default")
        )
    m1, m2 = first.read_manifest(), second.read_manifest()
    assert m1["models"] == m2["models"]
    assert m1["models"]["cnn"]["init_seed"] != m1["models"]["resnet"]["init_seed"]  # each model its own seed
    assert re.fullmatch("[0-9a-f]{32}", m1["models"]["cnn"]["weights_hash"])
    assert m1["fingerprints"]["units"] == m2["fingerprints"]["units"]
    assert len(m1["fingerprints"]["units"]) == 2 * 2 * 2
    other = RunStore(run(_random_cfg(npz, tmp_path / "c", seed=1))).read_manifest()
    assert other["models"]["cnn"]["weights_hash"] != m1["models"]["cnn"]["weights_hash"]


def test_explain_and_evaluate_take_seed_for_random_weights(tmp_path, capsys):
    npz = make_npz(tmp_path / "d.npz", n=4)
    for out, seed in (("a", 0), ("b", 0), ("c", 3)):
        args = ["explain", "--model", "small_cnn", "--data", npz, "--methods", "saliency", "--out", tmp_path / out]
        assert run_cli(capsys, *args, "--seed", seed, "--overlays", 0).code == 0
    a, b, c = (np.load(tmp_path / o / "saliency.npz")["attributions"] for o in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    scores = []
    for name, seed in (("a", 0), ("b", 0), ("c", 3)):
        out = tmp_path / f"{name}.parquet"
        args = ["evaluate", "--model", "small_cnn", "--data", npz, "--methods", "saliency"]
        assert run_cli(capsys, *args, "--metrics", "sparseness", "--out", out, "--seed", seed).code == 0
        scores.append(pd.read_parquet(out)["value"].to_numpy())
    np.testing.assert_array_equal(scores[0], scores[1])
    assert not np.array_equal(scores[0], scores[2])


# ----------------------------------------------------------------------------- stale units

CONFIG = {
    "out": "out/run",
    "seed": 0,
    "unit_images": 4,
    "batch_size": 8,
    "data": {"path": "data"},
    "models": [{"name": "cnn", "spec": "model.pt"}, {"name": "rnd", "spec": "small_cnn"}],
    "methods": ["saliency", "gradcam", "random"],
    "metrics": ["relevance_mass_accuracy", "sparseness"],
    "analyses": {"ranking": None, "sensitivity": None},
}
N_UNITS = 2 * 3 * 2  # models x methods x (8 images / 4 per unit)
TRAIN = ["train", "--data", "data", "--out", "model.pt", "--epochs", "1", "--width", "4", "--batch-size", "4"]


@pytest.fixture
def ws(tmp_path, monkeypatch, capsys):
    """A folder of 8 images with masks, a model trained on it (seed 0) and a finished run."""
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "data", n=4, masks=True)
    assert run_cli(capsys, *TRAIN, "--seed", "0").code == 0
    write_config(tmp_path)
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert r.code == 0, r.err
    return tmp_path


def write_config(ws: Path, name: str = "config.yaml", **changes) -> str:
    (ws / name).write_text(yaml.safe_dump({**CONFIG, **changes}))
    return name


def _unit_stamps(ws: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (ws / "out" / "run" / "units").glob("*.parquet")}


def _manifest(ws: Path) -> dict:
    return json.loads((ws / "out" / "run" / "manifest.json").read_text())


def _refresh_then_compare_with_fresh(ws: Path, capsys, n_stale: int, stale_prefixes: tuple[str, ...]) -> None:
    """``--refresh`` recomputes exactly ``n_stale`` units (those whose file names start with
    ``stale_prefixes``, when given) and leaves a run equal to a fresh run of the same inputs."""
    before = _unit_stamps(ws)
    r = run_cli(capsys, "run", "config.yaml", "--no-report", "--refresh")
    assert r.code == 0, r.err
    assert f"({N_UNITS - n_stale} already done)" in " ".join(r.out.split())
    m = _manifest(ws)
    assert m["units"]["computed_this_time"] == n_stale
    assert m["fingerprints"]["stale_recomputed"] == n_stale
    after = _unit_stamps(ws)
    rewritten = {k for k in before if after.get(k) != before[k] and not k.endswith(".curves.parquet")}
    assert len(rewritten) == n_stale
    if stale_prefixes:
        assert all(k.startswith(stale_prefixes) for k in rewritten), rewritten
    write_config(ws, "fresh.yaml", out="out/fresh")
    assert run_cli(capsys, "run", "fresh.yaml", "--no-report").code == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(ws / "out" / "run" / "results.parquet"),
        pd.read_parquet(ws / "out" / "fresh" / "results.parquet"),
        check_exact=True,
    )
    refreshed, fresh = RunStore(ws / "out" / "run"), RunStore(ws / "out" / "fresh")
    for model in ("cnn", "rnd"):
        np.testing.assert_array_equal(
            refreshed.attributions(model, "saliency", "default"), fresh.attributions(model, "saliency", "default")
        )
    again = run_cli(capsys, "run", "config.yaml", "--no-report")  # now everything is fresh: nothing to do
    assert again.code == 0 and _manifest(ws)["units"]["computed_this_time"] == 0


def test_a_model_retrained_in_place_is_refused_and_refresh_recomputes_only_its_units(ws, capsys):
    assert run_cli(capsys, *TRAIN, "--seed", "1").code == 0  # same file, other weights
    before = snapshot(ws / "out")
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(
        r,
        rf"model cnn \(model\.pt\) changed since the run folder out/run was written \(weights hash {HASH} -> {HASH}\); "
        r"use --refresh to recompute the 6 stale units or --force to recompute everything\.",
    )
    assert len(r.err.strip().splitlines()) <= 2
    assert snapshot(ws / "out") == before  # nothing written, nothing deleted
    _refresh_then_compare_with_fresh(ws, capsys, 6, ("cnn__",))


def test_an_image_changed_in_place_is_refused_and_refresh_recomputes_only_its_units(ws, capsys):
    img = ws / "data" / "b" / "2.png"
    from PIL import Image

    pixels = np.asarray(Image.open(img)).copy()
    pixels[3, 5] ^= 0x40
    write_png(img, pixels)
    before = snapshot(ws / "out")
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    # b/2 is image 6 of 8: in the second unit of every (model, method), 6 units in all
    assert_user_error(
        r,
        r"1 image changed since the run folder out/run was written \(e\.g\. b/2\); "
        r"use --refresh to recompute the 6 stale units or --force to recompute everything\.",
    )
    assert snapshot(ws / "out") == before
    _refresh_then_compare_with_fresh(ws, capsys, 6, tuple(f"{m}__" for m in ("cnn", "rnd")))
    assert all(k.endswith("0000004.parquet") for k in _changed_since(ws, before))


def _changed_since(ws: Path, before: dict[str, str]) -> list[str]:
    now = snapshot(ws / "out" / "run" / "units")
    return [k for k, v in now.items() if before.get(f"run/units/{k}") != v and not k.endswith(".curves.parquet")]


def test_a_mask_changed_and_an_image_added_are_named_and_refresh_equals_a_fresh_run(ws, capsys):
    m = np.zeros((16, 16), np.uint8)
    m[2:6, 2:6] = 255
    write_png(ws / "data" / "masks" / "a" / "0.png", m)
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(r, r"1 mask changed since the run folder out/run was written \(e\.g\. a/0\); use --refresh")
    write_png(ws / "data" / "a" / "4.png", np.full((16, 16), 99, np.uint8))  # shifts b/* by one image
    write_png(ws / "data" / "masks" / "a" / "4.png", m)
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(
        r,
        r"1 mask \(e\.g\. a/0\) and the list of images \(1 added, e\.g\. a/4\) changed since the run folder "
        r"out/run was written; use --refresh to recompute the 12 stale units or --force to recompute everything\.",
    )
    r = run_cli(capsys, "run", "config.yaml", "--no-report", "--refresh")
    assert r.code == 0, r.err
    assert RunStore(ws / "out" / "run").attributions("cnn", "saliency", "default").shape[0] == 9
    write_config(ws, "fresh.yaml", out="out/fresh")
    assert run_cli(capsys, "run", "fresh.yaml", "--no-report").code == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(ws / "out" / "run" / "results.parquet"),
        pd.read_parquet(ws / "out" / "fresh" / "results.parquet"),
        check_exact=True,
    )
    # one image fewer again: the units past the end no longer belong to the run
    os.remove(ws / "data" / "a" / "4.png")
    os.remove(ws / "data" / "masks" / "a" / "4.png")
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(
        r,
        r"the list of images changed since the run folder out/run was written \(1 removed, e\.g\. a/4\); use --refresh "
        r"to recompute the 6 stale units \(and drop the 6 that no longer belong to the run\) or --force",
    )
    assert run_cli(capsys, "run", "config.yaml", "--no-report", "--refresh").code == 0
    assert len(RunStore(ws / "out" / "run").unit_ids()) == N_UNITS


def test_dataset_normalisation_makes_one_changed_image_change_every_unit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_folder(tmp_path / "data", n=4, masks=True)
    cfg = {**CONFIG, "models": [{"name": "rnd", "spec": "small_cnn"}], "methods": ["saliency"]}
    cfg["data"] = {"path": "data", "normalise": "dataset"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli(capsys, "run", "config.yaml", "--no-report").code == 0
    write_png(tmp_path / "data" / "a" / "0.png", np.full((16, 16), 7, np.uint8))
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(
        r,
        r"1 image \(e\.g\. a/0\) and the normalisation \(mean \[[0-9.]+\] -> \[[0-9.]+\]\) changed since the run "
        r"folder out/run was written; use --refresh to recompute the 2 stale units",
    )


def test_force_and_refresh_together_are_refused(ws, capsys):
    assert_user_error(
        run_cli(capsys, "run", "config.yaml", "--force", "--refresh"),
        r"--force recomputes everything and --refresh only what changed; give one of them\.",
    )


def test_a_unit_stored_without_a_record_is_never_reused(ws, capsys):
    """A unit file without its input record (an older xaiscope) counts as stale."""
    unit = sorted((ws / "out" / "run" / "units").glob("rnd__saliency__*0000000.parquet"))[0]
    rows = pd.read_parquet(unit)
    rows.attrs = {}
    rows.to_parquet(unit, index=False)
    r = run_cli(capsys, "run", "config.yaml", "--no-report")
    assert_user_error(
        r,
        r"1 unit in the run folder out/run was stored without a record of its inputs; "
        r"use --refresh to recompute the 1 stale unit or --force to recompute everything\.",
    )
    assert run_cli(capsys, "run", "config.yaml", "--no-report", "--refresh").code == 0
    assert _manifest(ws)["units"]["computed_this_time"] == 1


# ----------------------------------------------------------------------------- model collections


def test_collection_keeps_fresh_models_refuses_changed_ones_and_refresh_retrains_only_those(tmp_path, capsys):
    from PIL import Image

    data, coll = tmp_path / "data", tmp_path / "coll"
    make_folder(data, n=4)
    args = ["collection", "--data", data, "--out", coll, "--epochs", "1", "--width", "4", "--batch-size", "4"]
    args += ["--seeds", "2"]
    assert run_cli(capsys, *args).code == 0
    first = json.loads((coll / "manifest.json").read_text())
    hashes = [m["weights_hash"] for m in first["models"]]
    assert len(set(hashes)) == 2 and len(first["images"]) == 8
    # a model file changed in place: refused, nothing written, then retrained alone
    state = torch.load(coll / "seed_0001.pt", weights_only=True)
    state["classifier.bias"] += 1.0
    torch.save(state, coll / "seed_0001.pt")
    before = snapshot(coll)
    r = run_cli(capsys, *args)
    assert_user_error(
        r,
        rf"model seed_0001\.pt changed since the collection {re.escape(str(coll))} was written "
        rf"\(weights hash {HASH} -> {HASH}\); use --refresh to retrain the 1 stale model or --force to retrain "
        r"everything\.",
    )
    assert snapshot(coll) == before
    kept = (coll / "seed_0000.pt").stat().st_mtime_ns
    assert run_cli(capsys, *args, "--refresh").code == 0
    second = json.loads((coll / "manifest.json").read_text())
    assert [m["status"] for m in second["models"]] == ["kept", "retrained"]
    assert (coll / "seed_0000.pt").stat().st_mtime_ns == kept
    assert [m["weights_hash"] for m in second["models"]] == hashes  # training is seeded: the same weights again
    # a training image changed in place: every model is stale
    img = data / "a" / "1.png"
    pixels = np.asarray(Image.open(img)).copy()
    pixels[0, 0] ^= 0x10
    write_png(img, pixels)
    before = snapshot(coll)
    r = run_cli(capsys, *args)
    assert_user_error(
        r,
        rf"The collection in {re.escape(str(coll))} was made with different training data \(1 image changed, "
        r"e\.g\. a/1\); use --refresh to retrain the 2 stale models or --force to retrain everything, or choose a "
        r"new --out\.",
    )
    assert snapshot(coll) == before
    assert run_cli(capsys, *args, "--seeds", "1", "--refresh").code == 0
    third = json.loads((coll / "manifest.json").read_text())
    assert [(m["seed"], m["status"]) for m in third["models"]] == [(0, "retrained")]
    assert not (coll / "seed_0001.pt").exists()  # made from the old data and not asked for again: dropped
    assert third["models"][0]["weights_hash"] != hashes[0]

"""Ground-truth benchmark: determinism, exact masks, tissue, confounder rate, honesty, file layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from xaiscope import __version__
from xaiscope.data import load_folder
from xaiscope.data.benchmark import BenchmarkParams, generate, make_dataset, make_split
from xaiscope.errors import ConfigError, DataError, OutputError

SMALL = dict(n_train=24, n_test=10, size=32, radius=(0.08, 0.14))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path):
    generate(tmp_path / "a", **SMALL, confounder_rate=0.5)
    generate(tmp_path / "b", **SMALL, confounder_rate=0.5)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == (24 + 10) * 3 + 2
    assert all(a[k] == b[k] for k in a)
    generate(tmp_path / "c", **{**SMALL, "seed": 1})
    c = _files(tmp_path / "c")
    pngs = [k for k in c.keys() & a.keys() if k.endswith(".png") and "masks" not in k]
    assert pngs and all(c[k] != a[k] for k in pngs)


def test_layout_json_and_load_folder_round_trip(tmp_path):
    path = generate(tmp_path / "bm", **SMALL, confounder_rate=0.5)
    info = json.loads(path.read_text())
    assert info["xaiscope_version"] == __version__
    assert (
        info["params"]["n_train"] == 24
        and info["params"]["lesions"] == [1, 3]
        and info["params"]["background"] == "retina"
    )
    assert info["classes"] == ["0_regular", "1_irregular"]
    assert info["counts"] == {"train": {"0_regular": 12, "1_irregular": 12}, "test": {"0_regular": 5, "1_irregular": 5}}
    assert info["confounded"] == {"train": 6, "test": 2}  # round(0.5 * 12), round(0.5 * 5)
    disk = load_folder(tmp_path / "bm" / "train")
    mem, mem_test = make_dataset(**SMALL, confounder_rate=0.5)
    assert disk.classes == mem.classes and disk.ids == mem.ids
    assert torch.equal(disk.x, mem.x) and torch.equal(disk.y, mem.y) and torch.equal(disk.masks, mem.masks)
    assert torch.equal(disk.extra_masks["confounder"], mem.extra_masks["confounder"])
    assert len(mem_test) == 10 and torch.equal(load_folder(tmp_path / "bm" / "test").x, mem_test.x)
    meta = (tmp_path / "bm" / "metadata.csv").read_text().splitlines()
    assert meta[0].startswith("split,id,label,class,n_lesions,lesion_area,confounder") and len(meta) == 35
    with Image.open(tmp_path / "bm" / "train" / f"{disk.ids[0]}.png") as im:
        assert im.mode == "L" and im.size == (32, 32)


@pytest.mark.parametrize("background", ["retina", "cell", "ihc", "mri", "noise"])
def test_masks_are_exactly_the_changed_pixels_and_on_tissue(background):
    p = BenchmarkParams.from_kwargs(n_train=40, size=48, background=background, lesions=(1, 3))
    a = make_split(p, "train")
    plain = np.round(a["background"] * 255).astype(np.uint8)
    outside = ~a["mask"]
    assert np.array_equal(a["image"][outside], plain[outside])  # nothing changes outside the mask
    assert np.array_equal(a["mask"], a["soft"] > 0)
    changed = a["image"] != plain
    assert changed[a["mask"]].mean() > 0.9  # nearly every mask pixel visibly changed (8-bit rounding aside)
    assert not (a["mask"] & ~a["foreground"]).any()  # lesions stay on tissue
    for i in range(40):  # lesions are separate: one connected component per lesion
        assert ndimage.label(a["mask"][i])[1] == a["n_lesions"][i]
    assert set(np.unique(a["n_lesions"])) <= {1, 2, 3}


def test_lesions_stay_inside_the_retina_disc_near_its_edge():
    p = BenchmarkParams.from_kwargs(n_train=200, size=48, background="retina", zoom=1.5)
    a = make_split(p, "train")
    assert (~a["foreground"]).any(axis=(1, 2)).mean() > 0.3  # many crops include the dark rim
    assert not (a["mask"] & ~a["foreground"]).any()


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_confounder_rate_and_mask(rate):
    p = BenchmarkParams.from_kwargs(n_train=101, size=40, confounder_rate=rate)
    a = make_split(p, "train")
    n1 = int((a["y"] == 1).sum())
    assert a["confounded"].sum() == round(rate * n1)
    assert not a["confounded"][a["y"] == 0].any()
    has_marker = a["confounder_mask"].any(axis=(1, 2))
    assert np.array_equal(has_marker, a["confounded"])
    assert not (a["confounder_mask"] & a["mask"]).any()
    if rate > 0:
        assert (a["image"][a["confounder_mask"]] == round(0.95 * 255)).all()
        side = a["confounder_mask"][has_marker].sum(axis=(1, 2))
        assert (side == side[0]).all()


def test_aligned_has_fixed_anatomy_and_class_regions():
    p = BenchmarkParams.from_kwargs(n_train=60, size=48, aligned=True, jitter=0.0, noise=0.0)
    a = make_split(p, "train")
    assert not a["flip_h"].any() and not a["flip_v"].any()
    assert np.allclose(a["background"], a["background"][0])  # the same anatomy at every pixel
    fg_cols = np.flatnonzero(a["foreground"][0].any(axis=0))
    mid = (fg_cols[0] + fg_cols[-1] + 1) / 2
    for i in range(60):  # every lesion is centred in its class's half (1.5 px slack: outline centroid vs polar centre)
        lab, k = ndimage.label(a["mask"][i])
        xs = np.array([c[1] for c in ndimage.center_of_mass(a["mask"][i], lab, range(1, k + 1))])
        assert (xs < mid + 1.5).all() if a["y"][i] == 0 else (xs > mid - 1.5).all()


def test_size_rule_separates_area_not_shape():
    p = BenchmarkParams.from_kwargs(n_train=200, size=48, rule="size", lesions=(1, 1))
    a = make_split(p, "train")
    assert p.classes == ["0_small", "1_large"]
    assert a["lesion_area"][a["y"] == 0].max() <= a["lesion_area"][a["y"] == 1].min() + 8


def test_global_statistics_classifier_stays_at_chance():
    """Mean/SD intensity, lesion area and lesion count carry no label: only the outline does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    p = BenchmarkParams.from_kwargs(n_train=2000, size=48, seed=7)
    a = make_split(p, "train")
    img = a["image"].reshape(2000, -1).astype(np.float64)
    feats = np.column_stack(
        [
            img.mean(1),
            img.std(1),
            a["lesion_area"],
            a["n_lesions"],
            (img * a["mask"].reshape(2000, -1)).sum(1) / a["lesion_area"],
        ]
    )
    quadratic = make_pipeline(
        StandardScaler(), PolynomialFeatures(2), StandardScaler(), LogisticRegression(max_iter=500)
    )
    for clf in (make_pipeline(StandardScaler(), LogisticRegression()), quadratic):
        acc = cross_val_score(clf, feats, a["y"], cv=5).mean()
        assert abs(acc - 0.5) <= 0.06, (type(clf).__name__, acc)


@pytest.mark.slow
def test_cnn_learns_the_shape():
    from xaiscope.data import normalise_dataset
    from xaiscope.models.train import init_model, train

    tr, te = make_dataset(n_train=800, n_test=200, size=48, seed=3)
    normalise_dataset(tr, "dataset")
    normalise_dataset(te, (tr.mean, tr.std))
    model = init_model("small_cnn", seed=0, in_channels=1, num_classes=2, width=12)
    res = train(model, tr, test=te, epochs=12, lr=3e-3, batch_size=32, progress=False)
    assert res.test_acc >= 0.85


def test_folder_background(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70), dtype=np.uint8)).save(
            tmp_path / "imgs" / "sub" / f"{i}.png"
        )
    train, _ = make_dataset(
        n_train=10, n_test=0, size=32, background=f"folder:{tmp_path / 'imgs'}", radius=(0.08, 0.12)
    )
    assert train.x.shape == (10, 1, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no PNG"):
        make_dataset(n_train=4, size=32, background=f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="does not exist"):
        make_dataset(n_train=4, size=32, background=f"folder:{tmp_path / 'nope'}")


def test_bad_settings_and_outputs(tmp_path):
    with pytest.raises(ConfigError, match="Unknown background 'retna' \\(did you mean 'retina'\\?\\)"):
        make_dataset(background="retna")
    with pytest.raises(ConfigError, match="alpha must be in"):
        make_dataset(alpha=1.5)
    with pytest.raises(ConfigError, match="--lesions must look like"):
        make_dataset(lesions="a-b")
    with pytest.raises(ConfigError, match="Unknown benchmark setting 'n_trian'"):
        make_dataset(n_trian=3)
    with pytest.raises(DataError, match="did not fit"):
        make_dataset(n_train=4, n_test=0, size=20, lesions=(8, 8), radius=(0.2, 0.25))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty and holds no benchmark"):
        generate(tmp_path / "full", **SMALL)
    assert (tmp_path / "full" / "keep.txt").exists()
    generate(tmp_path / "again", **SMALL)
    generate(tmp_path / "again", **{**SMALL, "n_train": 4, "n_test": 0})  # an earlier benchmark is replaced
    assert not (tmp_path / "again" / "test").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "full"]  # no temporary folders left


def test_cli_benchmark(tmp_path):
    from xaiscope.cli import main

    main(
        [
            "benchmark",
            "--out",
            str(tmp_path / "b"),
            "--n-train",
            "6",
            "--n-test",
            "2",
            "--size",
            "32",
            "--background",
            "noise",
            "--lesions",
            "1-2",
            "--confounder-rate",
            "0.5",
            "--aligned",
            "--seed",
            "2",
        ]
    )
    info = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert info["params"]["aligned"] is True and info["params"]["lesions"] == [1, 2] and info["params"]["seed"] == 2
    assert (tmp_path / "b" / "train" / "confounder_masks").is_dir()
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--out", str(tmp_path / "c"), "--background", "mars"])
    assert e.value.code == 2

"""3D lesion benchmark: shapes and affine, exact masks in the brain, determinism, honesty,
confounder, the NIfTI folder, the CLI, ``small_cnn3d`` and training on volumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from xaiscope import __version__
from xaiscope.data import Dataset
from xaiscope.data.benchmark import VolumeParams, generate_3d, make_dataset_3d
from xaiscope.data.benchmark.params import MNI_BOX
from xaiscope.data.benchmark.volumes import DHW_FROM_IJK, confounder_box, make_split, template
from xaiscope.errors import ConfigError, DataError

SIZE = (24, 28, 24)  # voxels of about 6.7 mm
SMALL = dict(n_train=24, n_test=8, size=SIZE, radius=(13.0, 19.0))


@pytest.fixture(scope="module")
def split():
    return make_split(VolumeParams.from_kwargs(**{**SMALL, "n_train": 60}), "train")


def test_shapes_dtypes_and_affine():
    import nibabel as nib
    from nilearn import datasets

    train, test = make_dataset_3d(**SMALL)
    assert train.x.shape == (24, 1, *SIZE) and train.x.dtype == torch.float32
    assert train.masks.shape == (24, *SIZE) and train.masks.dtype == torch.bool
    assert train.affines.shape == (24, 4, 4) and train.affines.dtype == np.float64
    assert len(test) == 8 and test.spatial_dims == 3 and train.classes == ["0_regular", "1_irregular"]
    assert torch.bincount(train.y).tolist() == [12, 12] and train.ids[0] == "0_regular/00000"
    assert not train.extra_masks
    mni = datasets.load_mni152_template(resolution=2)
    old = mni.affine @ DHW_FROM_IJK  # (d, h, w) of the 2 mm template, which is already RAS
    start, stop = np.array(MNI_BOX).T
    factor = (stop - start) / np.array(SIZE)
    for v in ([0, 0, 0], [23, 27, 23], [5, 17, 9]):  # new voxel v sits at box index (v + 1/2) n/m - 1/2
        want = old @ np.append(start + (np.array(v) + 0.5) * factor - 0.5, 1.0)
        assert np.allclose(train.affines[0] @ np.append(v, 1.0), want, atol=1e-4)
    assert nib.aff2axcodes(train.affines[0]) == ("S", "A", "R")  # W is left-right
    assert np.array_equal(train.affines[0], train.affines[-1])
    assert np.array_equal(train.affines[0].astype(np.float32), train.affines[0])  # NIfTI's sform keeps it exactly


def test_masks_are_exactly_the_changed_voxels_inside_the_brain(split):
    a = split
    diff = a["image"] != a["background"]
    assert np.array_equal(diff, a["mask"])  # nothing changes outside the masks; every mask voxel changes
    assert np.array_equal(a["mask"], a["soft"] > 0)
    assert not (a["mask"] & ~a["brain"]).any()
    assert set(np.unique(a["n_lesions"])) <= {1, 2, 3}
    for i in range(len(a["y"])):
        centres = a["centres"][i][: a["n_lesions"][i]]
        assert a["tissue"][tuple(np.round(centres).astype(int).T)].all()  # centres in white matter
        assert np.isnan(a["centres"][i][a["n_lesions"][i] :]).all()
        assert ndimage.label(a["mask"][i])[1] == a["n_lesions"][i]  # separate lesions
    assert a["lesion_voxels"].min() >= 8
    assert (a["image"][a["mask"]] > a["background"][a["mask"]]).mean() > 0.99  # bright lesions


def test_same_seed_same_volumes_other_seed_other_volumes(tmp_path):
    p = VolumeParams.from_kwargs(**SMALL)
    a, b = make_split(p, "train"), make_split(p, "train")
    assert all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a)
    c = make_split(VolumeParams.from_kwargs(**{**SMALL, "seed": 1}), "train")
    assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["mask"], c["mask"])
    test = make_split(p, "test")
    assert not np.array_equal(a["image"][:8], test["image"])  # the splits draw from their own streams


def test_global_statistics_classifier_stays_at_chance():
    """Mean/SD intensity, lesion voxel share, count and mean lesion intensity carry no label: only shape does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    n = 800
    a = make_split(VolumeParams.from_kwargs(**{**SMALL, "n_train": n, "seed": 7}), "train")
    img = a["image"].reshape(n, -1).astype(np.float64)
    mask = a["mask"].reshape(n, -1)
    feats = np.column_stack(
        [
            img.mean(1),
            img.std(1),
            a["lesion_voxels"] / a["brain"].sum(),
            a["n_lesions"],
            (img * mask).sum(1) / a["lesion_voxels"],
        ]
    )
    quadratic = make_pipeline(
        StandardScaler(), PolynomialFeatures(2), StandardScaler(), LogisticRegression(max_iter=500)
    )
    for clf in (make_pipeline(StandardScaler(), LogisticRegression()), quadratic):
        acc = cross_val_score(clf, feats, a["y"], cv=5).mean()
        assert abs(acc - 0.5) <= 0.07, (type(clf).__name__, acc)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_confounder_marker_and_mask(rate):
    train, _ = make_dataset_3d(**{**SMALL, "n_train": 40, "n_test": 0}, confounder_rate=rate)
    if rate == 0:
        assert "confounder" not in train.extra_masks
        return
    cm = train.extra_masks["confounder"]
    marked = cm.flatten(1).any(1)
    assert int(marked.sum()) == 10 and not marked[train.y == 0].any()
    side, zone = confounder_box(SIZE)
    assert (cm[marked].flatten(1).sum(1) == side**3).all()
    assert not cm[:, zone + 1 :].any() and not cm[:, :, zone + 1 :].any() and not cm[:, :, :, zone + 1 :].any()
    assert (train.x[:, 0][cm] == np.float32(0.95)).all()
    assert not (cm & train.masks).any() and not (cm & torch.from_numpy(template(SIZE).brain.copy())).any()


def test_folder_round_trips_through_nibabel(tmp_path):
    import nibabel as nib

    path = generate_3d(tmp_path / "bm", **SMALL, confounder_rate=0.5)
    info = json.loads(path.read_text())
    assert info["kind"] == "xaiscope-benchmark" and info["dims"] == 3 and info["xaiscope_version"] == __version__
    assert info["params"]["size"] == list(SIZE) and info["params"]["lesions"] == [1, 3]
    assert info["counts"] == {"train": {"0_regular": 12, "1_irregular": 12}, "test": {"0_regular": 4, "1_irregular": 4}}
    assert info["confounded"] == {"train": 6, "test": 2}
    train, test = make_dataset_3d(**SMALL, confounder_rate=0.5)
    root = tmp_path / "bm"
    for split, ds in (("train", train), ("test", test)):
        for i, id_ in enumerate(ds.ids):
            img = nib.load(root / split / f"{id_}.nii.gz")
            assert img.get_data_dtype() == np.float32 and np.array_equal(img.affine, ds.affines[i])
            assert np.array_equal(np.asarray(img.dataobj), ds.x[i, 0].numpy())
            mask = nib.load(root / split / "masks" / f"{id_}.nii.gz")
            assert mask.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(mask.dataobj), ds.masks[i].numpy())
            conf = np.asarray(nib.load(root / split / "confounder_masks" / f"{id_}.nii.gz").dataobj)
            assert np.array_equal(conf, ds.extra_masks["confounder"][i].numpy())
    brain = nib.load(root / "brain_mask.nii.gz")
    assert np.array_equal(np.asarray(brain.dataobj) > 0, template(SIZE).brain)
    with open(root / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and list(rows[0]) == [
        "split",
        "id",
        "label",
        "class",
        "n_lesions",
        "lesion_voxels",
        "confounder",
    ]
    first = {p.relative_to(root): p.read_bytes() for p in root.rglob("*.nii.gz")}
    generate_3d(root, **SMALL, confounder_rate=0.5)  # an earlier benchmark is replaced, byte for byte the same
    assert first == {p.relative_to(root): p.read_bytes() for p in root.rglob("*.nii.gz")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm"]


def test_cli_benchmark_3d(tmp_path):
    from xaiscope.cli import main

    args = ["benchmark", "--3d", "--out", str(tmp_path / "b"), "--n-train", "4", "--n-test", "2"]
    main([*args, "--size", "32,40,32", "--lesions", "1-2", "--confounder-rate", "1", "--tissue", "gm_wm"])
    info = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert info["params"]["size"] == [32, 40, 32] and info["params"]["tissue"] == "gm_wm"
    assert len(list((tmp_path / "b" / "train").rglob("*.nii.gz"))) == 4 * 3
    for bad in (["--background", "mri"], ["--annotators", "2"], ["--size", "32x40"]):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 2
    for bad in (["--tissue", "wm"], ["--size", "32,40,32"]):  # 3D settings without --3d
        with pytest.raises(SystemExit) as e:
            main(["benchmark", "--out", str(tmp_path / "c"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "c").exists()


def test_bad_settings_give_one_sentence():
    from xaiscope.commands.benchmark_job import run_benchmark

    with pytest.raises(ConfigError, match="--size of a volume must be D,H,W"):
        make_dataset_3d(size="48x56")
    with pytest.raises(ConfigError, match="size must be three voxel counts between 16 and 256"):
        make_dataset_3d(size=(8, 56, 48))
    with pytest.raises(ConfigError, match="under 1.5 voxels"):
        make_dataset_3d(size=(16, 16, 16))  # default radius 15 mm on 12 mm voxels
    with pytest.raises(ConfigError, match="tissue must be one of wm, gm_wm, got 'csf'"):
        make_dataset_3d(tissue="csf")
    with pytest.raises(ConfigError, match="Unknown 3D benchmark setting 'backgroud'"):
        make_dataset_3d(backgroud="mri")
    with pytest.raises(ConfigError, match="--rule applies to the 2D benchmark only"):
        run_benchmark(out="unused", three_d=True, rule="size")
    with pytest.raises(DataError, match="did not fit"):
        make_dataset_3d(n_train=4, n_test=0, size=SIZE, lesions=(6, 6), radius=(30.0, 40.0))


def _toy3d(n: int = 32, seed: int = 0) -> Dataset:
    """Class 1 has a bright cube in the upper half of D, class 0 in the lower half."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 1, 12, 12, 12, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        d = int(torch.randint(1, 4, (1,), generator=g)) + (0 if y[i] else 6)
        x[i, 0, d : d + 3, 4:7, 4:7] += 2.0
    return Dataset(x=x, y=y, ids=[f"{int(c)}/{i}" for i, c in enumerate(y)], classes=["0", "1"])


def test_small_cnn3d_forward_cam_layer_and_training(tmp_path):
    from xaiscope import models
    from xaiscope.models.train import augment_batch, init_model, save, train

    model = init_model("small_cnn3d", seed=0, in_channels=1, num_classes=2, width=4)
    assert model(torch.zeros(3, 1, *SIZE)).shape == (3, 2)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 3 and model.features[-2] is convs[-1] and convs[-1].out_channels == 16
    x = torch.randn(6, 1, 4, 5, 6)
    flipped = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, augment_batch(x, torch.Generator().manual_seed(0)))
    for a, b in zip(flipped, x):  # volumes: left-right (W) flips only
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert not torch.equal(flipped, x)
    res = train(model, _toy3d(), test=_toy3d(seed=1), epochs=6, lr=3e-3, batch_size=8, augment=True, progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    save(res.model, tmp_path / "m.pt", arch="small_cnn3d", arch_kwargs={"width": 4}, classes=["0", "1"],
         input_size=[1, 12, 12, 12], normalisation=None)  # fmt: skip
    info = json.loads((tmp_path / "m.json").read_text())
    assert info["input_size"] == [1, 12, 12, 12] and info["arch_kwargs"]["in_channels"] == 1
    back = models.load(str(tmp_path / "m.pt"))
    v = _toy3d(4).x
    assert torch.allclose(back(v), res.model(v))


def test_balanced_batches_are_the_default_for_volumes_only():
    from xaiscope.models.train import init_model, stratified_order, train

    y = torch.tensor([0] * 30 + [1] * 10)
    order = stratified_order(y, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(40))
    assert torch.equal(order, stratified_order(y, torch.Generator().manual_seed(0)))
    for start in range(0, 40, 8):  # every batch of 8 holds 6 +- 1 of class 0
        assert abs(int((y[order[start : start + 8]] == 0).sum()) - 6) <= 1
    vol = init_model("small_cnn3d", seed=0, width=2)
    assert train(vol, _toy3d(8), epochs=1, progress=False).settings["balance"] is True
    img = Dataset(x=torch.randn(8, 1, 8, 8), y=torch.arange(8) % 2, ids=[str(i) for i in range(8)], classes=["0", "1"])
    res = train(init_model("small_cnn", seed=0, width=2), img, epochs=1, progress=False)
    assert res.settings["balance"] is False

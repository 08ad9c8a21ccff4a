"""Several annotators: reading them, their agreement, STAPLE, the benchmark's synthetic
annotators, and the ``xaiscope annotators`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cli_helpers import assert_user_error, run_cli
from xaiscope.analyses import annotators as ann
from xaiscope.data import Dataset, load_folder, load_npz
from xaiscope.data.benchmark import generate, make_dataset
from xaiscope.data.dataset import majority_vote
from xaiscope.errors import DataError

# --------------------------------------------------------------------------- reading


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr, mode="L").save(path)


def _folder(root, annotators=("ann_a", "ann_b", "ann_c"), size=8, seed=0):
    """Two classes of two images; each annotator's masks are random; returns the masks [4, A, H, W] in id order."""
    rng = np.random.default_rng(seed)
    ids = [("c0", "i0"), ("c0", "i1"), ("c1", "i2"), ("c1", "i3")]
    masks = rng.random((4, len(annotators), size, size)) < 0.4
    for k, (c, stem) in enumerate(ids):
        _png(root / c / f"{stem}.png", rng.integers(0, 255, (size, size), dtype=np.uint8))
        for j, a in enumerate(annotators):
            _png(root / "masks" / a / c / f"{stem}.png", masks[k, j])
    return masks


def test_majority_vote_counts_ties_as_foreground():
    m = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool).view(1, 2, 2, 2)  # two annotators
    assert majority_vote(m).view(-1).tolist() == [True, True, True, False]  # a tie is foreground: the union
    three = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool).view(1, 3, 2, 2)
    assert majority_vote(three).view(-1).tolist() == [True, False, False, False]


def test_folder_with_annotator_folders_reads_each_and_the_consensus(tmp_path):
    masks = _folder(tmp_path)
    ds = load_folder(tmp_path)
    assert ds.classes == ["c0", "c1"]  # masks/ is no class, nor are the annotators
    assert ds.annotators == ["ann_a", "ann_b", "ann_c"]
    assert ds.annotator_masks.dtype == torch.bool and ds.annotator_masks.shape == (4, 3, 8, 8)
    assert np.array_equal(ds.annotator_masks.numpy(), masks)
    assert torch.equal(ds.masks, torch.from_numpy(masks.sum(1) >= 2))
    sub = ds.subset([2, 0])
    assert sub.annotators == ds.annotators and torch.equal(sub.annotator_masks, ds.annotator_masks[[2, 0]])


def test_single_mask_folders_keep_their_layout(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("c0", "c1"):
        _png(tmp_path / c / "x.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        _png(tmp_path / "masks" / c / "x.png", rng.random((8, 8)) < 0.5)
    ds = load_folder(tmp_path)
    assert ds.masks.shape == (2, 8, 8) and ds.annotator_masks is None and ds.annotators is None


def test_annotator_missing_an_image_is_one_sentence(tmp_path):
    _folder(tmp_path)
    (tmp_path / "masks" / "ann_b" / "c1" / "i2.png").unlink()
    with pytest.raises(DataError, match=r"The image .*i2.png has no mask in .*ann_b; every image needs one\."):
        load_folder(tmp_path)


def test_annotator_mask_of_the_wrong_size_is_one_sentence(tmp_path):
    _folder(tmp_path)
    _png(tmp_path / "masks" / "ann_c" / "c0" / "i1.png", np.zeros((6, 8), dtype=bool))
    with pytest.raises(DataError, match=r"ann_c/c0/i1.png is 8x6 but its image is 8x8"):
        load_folder(tmp_path)


def test_class_and_annotator_folders_mixed_is_one_sentence(tmp_path):
    _folder(tmp_path)
    _png(tmp_path / "masks" / "c0" / "i0.png", np.zeros((8, 8), dtype=bool))
    with pytest.raises(DataError, match=r"mixes class folders \(c0\) and annotator folders"):
        load_folder(tmp_path)


def _npz(path, masks, **more):
    n = masks.shape[0]
    x = np.random.default_rng(0).random((n, 1, *masks.shape[-2:]), dtype=np.float32)
    np.savez(path, x=x, y=np.arange(n) % 2, masks=masks, **more)


def test_npz_annotator_axis_with_and_without_names(tmp_path):
    masks = np.random.default_rng(2).random((5, 4, 6, 6)) < 0.5
    _npz(tmp_path / "a.npz", masks, annotators=np.array(["w", "x", "y", "z"]))
    ds = load_npz(tmp_path / "a.npz")
    assert ds.annotators == ["w", "x", "y", "z"] and np.array_equal(ds.annotator_masks.numpy(), masks)
    assert torch.equal(ds.masks, torch.from_numpy(masks.sum(1) >= 2))
    _npz(tmp_path / "b.npz", masks.astype(np.uint8))
    assert load_npz(tmp_path / "b.npz").annotators == ["0", "1", "2", "3"]


@pytest.mark.filterwarnings("ignore:The data type")
def test_zarr_group_with_an_annotator_axis(tmp_path):
    zarr = pytest.importorskip("zarr")
    from xaiscope.data import load

    masks = np.random.default_rng(4).random((3, 2, 5, 5)) < 0.5
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("x", data=np.zeros((3, 1, 5, 5), np.float32))
    g.create_array("y", data=np.array([0, 1, 0]))
    g.create_array("masks", data=masks)
    g.create_array("annotators", data=np.array(["reader_1", "reader_2"]))
    ds = load(tmp_path / "d.zarr")
    assert ds.annotators == ["reader_1", "reader_2"] and np.array_equal(ds.annotator_masks.numpy(), masks)
    assert torch.equal(ds.masks, torch.from_numpy(masks.any(1)))  # two annotators: a tie is foreground
    g.create_array("bad", data=np.zeros(1))
    del g["masks"]
    g.create_array("masks", data=np.zeros((3, 2, 5, 4), bool))
    with pytest.raises(DataError, match=r"'masks' in .*d.zarr has shape \[3, 2, 5, 4\]"):
        load(tmp_path / "d.zarr")
    (tmp_path / "e.zarr").mkdir()
    with pytest.raises(DataError, match=r"e.zarr is not a readable Zarr group"):
        load(tmp_path / "e.zarr")


def test_hdf5_file_with_an_annotator_axis(tmp_path):
    h5py = pytest.importorskip("h5py")
    from xaiscope.data import load

    masks = np.random.default_rng(5).random((4, 3, 6, 6)) < 0.4
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = np.random.default_rng(0).random((4, 1, 6, 6)).astype(np.float32)
        f["y"] = np.array([0, 1, 0, 1])
        f["masks"] = masks
        f["annotators"] = np.array([b"a", b"b", b"c"])
        f["ids"] = np.array([b"i0", b"i1", b"i2", b"i3"])
        f["classes"] = np.array([b"healthy", b"lesion"])
    ds = load(tmp_path / "d.h5")
    assert ds.annotators == ["a", "b", "c"] and ds.ids == ["i0", "i1", "i2", "i3"]
    assert ds.classes == ["healthy", "lesion"] and np.array_equal(ds.annotator_masks.numpy(), masks)
    assert torch.equal(ds.masks, torch.from_numpy(masks.sum(1) >= 2))  # majority of three
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["x"] = np.zeros((4, 1, 6, 6), np.float32)
        f["y"] = np.array([0, 1, 0, 1])
        f["masks"] = np.zeros((4, 3, 6, 5), bool)
    with pytest.raises(DataError, match=r"'masks' in .*bad.hdf5 has shape \[4, 3, 6, 5\]"):
        load(tmp_path / "bad.hdf5")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"broken.h5 is not a readable HDF5 file"):
        load(tmp_path / "broken.h5")


@pytest.mark.parametrize(
    "masks, more, message",
    [
        (
            np.zeros((5, 2, 6, 7), bool),
            {},
            r"'masks' in .* has shape \[5, 2, 6, 7\] but the images need \[5, annotators, 6, 6\]",
        ),
        (np.zeros((4, 2, 6, 6), bool), {}, r"has shape \[4, 2, 6, 6\] but the images need \[5, annotators"),
        (np.full((5, 2, 6, 6), 3, np.uint8), {}, r"'masks' in .* is not binary"),
        (
            np.zeros((5, 2, 6, 6), bool),
            {"annotators": np.array(["a", "b", "c"])},
            r"names 3 annotators but 'masks' holds 2",
        ),
        (np.zeros((5, 6, 6), bool), {"annotators": np.array(["a"])}, r"names annotators but its 'masks' array is not"),
    ],
)
def test_npz_annotator_errors_are_one_sentence(tmp_path, masks, more, message):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 1, 6, 6), np.float32), y=np.arange(5) % 2, masks=masks, **more)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "d.npz")


def test_dataset_checks_annotator_masks_and_fingerprints_them():
    x, y, ids = torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"]
    with pytest.raises(DataError, match=r"Annotator masks in the dataset have shape \[2, 3, 4, 5\]"):
        Dataset(x, y, ids, ["0", "1"], annotator_masks=torch.zeros(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(DataError, match="names 2 annotators but its masks hold 3"):
        Dataset(x, y, ids, ["0", "1"], annotator_masks=torch.zeros(2, 3, 4, 4, dtype=torch.bool), annotators=["p", "q"])
    one = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    one[:, :2, 0, 0] = True
    other = one.clone()
    other[:, 2, 3, 3] = True  # a third annotator's stray pixel: the same majority vote
    a = Dataset(x, y, ids, ["0", "1"], annotator_masks=one)
    b = Dataset(x, y, ids, ["0", "1"], annotator_masks=other)
    assert torch.equal(a.masks, b.masks) and a.fingerprint() != b.fingerprint()


# --------------------------------------------------------------------------- agreement


def test_fleiss_kappa_of_the_textbook_table_is_0_210():
    # Fleiss 1971 as tabulated on Wikipedia ("Fleiss' kappa", worked example): 10 subjects,
    # 5 categories, 14 raters; P_bar = 0.378, P_e = 0.213, kappa = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert ann.fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)
    assert round(ann.fleiss_kappa(table), 3) == 0.210


def test_pixel_kappa_agrees_with_statsmodels_and_is_1_for_identical_masks():
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 4, 10, 10, generator=g) < 0.3
    ratings = masks.permute(0, 2, 3, 1).reshape(-1, 4).long().numpy()
    table, _ = inter_rater.aggregate_raters(ratings, n_cat=2)
    assert ann.pixel_kappa(masks) == pytest.approx(inter_rater.fleiss_kappa(table, method="fleiss"), abs=1e-12)
    same = masks[:, :1].expand(3, 4, 10, 10)
    assert ann.pixel_kappa(same) == pytest.approx(1.0)
    with pytest.raises(DataError, match="same number"):
        ann.fleiss_kappa([[1, 1], [2, 1]])


def test_dice_and_iou_closed_form_and_pairwise_table():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, 1:3] = True, True  # |a| = |b| = 8, overlap 4
    d, u = ann.dice_iou(a, b)
    assert d[0] == pytest.approx(0.5) and u[0] == pytest.approx(4 / 12)
    assert math.isnan(d[1]) and math.isnan(u[1])  # both empty: nothing to agree on
    masks = torch.stack([a, b, a], dim=1)
    df = ann.pairwise_agreement(masks, ["p", "q", "r"], ["i0", "i1"])
    assert len(df) == 2 * 3 and list(df.columns) == ["image_id", "annotator_a", "annotator_b", "dice", "iou"]
    assert df[(df.annotator_a == "p") & (df.annotator_b == "r") & (df.image_id == "i0")].dice.item() == 1.0


def _noisy_panel(seed=0):
    """True squares; three careful annotators (2-5 % of pixels flipped) and one coin-flipper."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(20, 32, 32, dtype=torch.bool)
    truth[:, 8:20, 10:24] = True

    def flip(p):
        return truth ^ (torch.rand(truth.shape, generator=g) < p)

    noise = torch.rand(truth.shape, generator=g) < 0.5
    return truth, torch.stack([flip(0.02), flip(0.05), flip(0.03), noise], dim=1)


@pytest.mark.parametrize("backend", ["em", "simpleitk"])
def test_staple_gives_the_noise_annotator_the_lowest_weight(backend):
    if backend == "simpleitk":
        pytest.importorskip("SimpleITK")
    truth, masks = _noisy_panel()
    r = ann.staple(masks, backend=backend)
    weight = r.sensitivity + r.specificity
    assert r.backend == backend and int(np.argmin(weight)) == 3
    assert weight[3] < 1.1 and weight[:3].min() > 1.8  # a coin flip scores about 1, the careful ones near 2
    assert (r.consensus == truth).float().mean() > 0.99
    table = r.table(["a", "b", "c", "noise"])
    assert table.sort_values("weight").annotator.iloc[0] == "noise"


def test_own_staple_em_matches_simpleitk():
    pytest.importorskip("SimpleITK")
    _, masks = _noisy_panel(seed=3)
    em, itk = ann.staple(masks, backend="em"), ann.staple(masks, backend="simpleitk")
    np.testing.assert_allclose(em.sensitivity, itk.sensitivity, atol=1e-6)
    np.testing.assert_allclose(em.specificity, itk.specificity, atol=1e-6)
    assert torch.equal(em.consensus, itk.consensus)


def test_staple_of_identical_annotators_is_perfect():
    _, masks = _noisy_panel()
    r = ann.staple(masks[:, :1].expand(-1, 3, -1, -1).contiguous(), backend="em")
    np.testing.assert_allclose(r.sensitivity, 1.0, atol=1e-6)
    np.testing.assert_allclose(r.specificity, 1.0, atol=1e-6)


def test_top_fraction_keeps_the_largest_pixels():
    maps = torch.arange(32.0).view(2, 4, 4)
    top = ann.top_fraction(maps, torch.tensor([3, 5]))
    assert top.sum((1, 2)).tolist() == [3, 5] and top[0].view(-1)[-3:].all()
    assert ann.top_fraction(maps, 0.25).sum((1, 2)).tolist() == [4, 4]


def test_verdict():
    assert [ann.verdict(v, 0.4, 0.6) for v in (0.3, 0.4, 0.5, 0.6, 0.7)] == [
        "below",
        "inside",
        "inside",
        "inside",
        "above",
    ]
    assert ann.verdict(math.nan, 0.4, 0.6) == "undefined"


def test_methods_vs_annotators_places_methods_among_the_experts():
    truth, _ = _noisy_panel()
    shifted = [torch.roll(truth, s, dims=2) for s in (-2, 0, 2)]  # three experts, each off by a shift
    masks = torch.stack(shifted, dim=1)
    consensus = majority_vote(masks)
    g = torch.Generator().manual_seed(1)
    maps = {
        "oracle": truth.double() + 0.01 * torch.rand(truth.shape, generator=g, dtype=torch.float64),
        "random": torch.rand(truth.shape, generator=g, dtype=torch.float64),
    }
    area = consensus.flatten(1).sum(1)

    def dice(m, ref):
        b = m if m.dtype == torch.bool else ann.top_fraction(m, area)
        return ann.dice_iou(b, ref)[0]

    df = ann.methods_vs_annotators(maps, masks, ["l", "c", "r"], consensus, {"dice": dice}, extra={"truth": truth})
    assert set(df.reference) == {"l", "c", "r", ann.ANNOTATORS, "consensus", "truth"} and len(df) == 2 * 6
    got = df.set_index(["method", "reference"])
    # experts: l vs c and c vs r overlap 12 of 14 columns (Dice 12/14), l vs r 10 of 14
    assert got.loc[("oracle", "consensus"), "expert_low"] == pytest.approx(10 / 14)
    assert got.loc[("oracle", "consensus"), "expert_high"] == pytest.approx(12 / 14)
    assert got.loc[("oracle", "consensus"), "verdict"] == "above"  # the truth is the consensus here
    assert got.loc[("oracle", "c"), "verdict"] == "above"
    assert got.loc[("oracle", "l"), "verdict"] == "inside"  # as far from l as c is
    mean = got.loc[("oracle", ann.ANNOTATORS)]
    assert mean["mean"] == pytest.approx((12 / 14 + 1 + 12 / 14) / 3)
    assert (mean.expert_low, mean.expert_high) == (pytest.approx(10 / 14), pytest.approx(12 / 14))
    assert mean.verdict == "above"
    assert (got.loc["random", "verdict"] == "below").all()
    assert (got.n == 20).all()


# --------------------------------------------------------------------------- benchmark

SMALL = dict(n_train=6, n_test=4, size=48, background="noise", seed=5)


def test_benchmark_annotators_are_seeded_and_change_no_image():
    a, _ = make_dataset(**SMALL, annotators=4)
    b, _ = make_dataset(**SMALL, annotators=4)
    c, _ = make_dataset(**{**SMALL, "seed": 6}, annotators=4)
    plain, _ = make_dataset(**SMALL)
    assert a.annotators == ["annotator_1_dilated", "annotator_2_eroded", "annotator_3_shifted", "annotator_4_partial"]
    assert torch.equal(a.annotator_masks, b.annotator_masks)
    assert not torch.equal(a.annotator_masks, c.annotator_masks)
    assert torch.equal(a.x, plain.x) and torch.equal(a.extra_masks["truth"], plain.masks)
    truth = a.extra_masks["truth"]
    dilated, eroded, shifted, partial = a.annotator_masks.unbind(1)
    assert (dilated | ~truth).all() and (dilated & ~truth).any()  # contains the truth, and more
    assert (eroded <= truth).all() and (eroded < truth).any()
    assert (partial <= truth).all() and (partial.sum((1, 2)) < truth.sum((1, 2))).all()
    assert not torch.equal(shifted, truth) and (shifted.sum((1, 2)) > 0).all()
    assert torch.equal(a.masks, majority_vote(a.annotator_masks))


def test_benchmark_annotators_on_disk_read_back(tmp_path):
    generate(tmp_path / "bm", **SMALL, annotators=5)
    info = json.loads((tmp_path / "bm" / "benchmark.json").read_text())
    assert info["params"]["annotators"] == 5 and "annotator_5_dilated" in info["truth"]["masks"]
    disk = load_folder(tmp_path / "bm" / "train")
    mem, _ = make_dataset(**SMALL, annotators=5)
    assert disk.annotators == mem.annotators and disk.ids == mem.ids
    assert torch.equal(disk.annotator_masks, mem.annotator_masks) and torch.equal(disk.masks, mem.masks)
    assert torch.equal(disk.extra_masks["truth"], mem.extra_masks["truth"])
    dil5 = disk.annotator_masks[:, 4]  # a second, stronger dilation
    assert dil5.sum() > disk.annotator_masks[:, 0].sum()


def test_cli_benchmark_annotators_option(tmp_path, capsys):
    out = tmp_path / "b"
    r = run_cli(capsys, "benchmark", "--out", out, "--n-train", "4", "--n-test", "0", "--size", "32",
                "--background", "noise", "--annotators", "2")  # fmt: skip
    assert r.code == 0, r.err
    assert sorted(p.name for p in (out / "train" / "masks").iterdir()) == ["annotator_1_dilated", "annotator_2_eroded"]
    assert (out / "train" / "true_masks").is_dir()
    bad = run_cli(capsys, "benchmark", "--out", tmp_path / "c", "--annotators", "17")
    assert_user_error(bad, r"annotators must be between 0 and 16, got 17\.")


# --------------------------------------------------------------------------- command


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("ann") / "bm"
    generate(root, n_train=6, n_test=8, size=32, background="noise", seed=2, annotators=4)
    return root / "test"


@pytest.mark.slow
def test_cli_annotators_writes_the_four_tables(bench, tmp_path, capsys):
    out = tmp_path / "out"
    r = run_cli(capsys, "annotators", "--model", "small_cnn", "--data", bench, "--methods", "saliency,gradcam",
                "--out", out)  # fmt: skip
    assert r.code == 0, r.err
    agreement = pd.read_parquet(out / "agreement.parquet")
    assert len(agreement) == 8 * 6 and agreement.dice.between(0, 1).all()
    kappa = json.loads((out / "kappa.json").read_text())
    assert -1 <= kappa["fleiss_kappa_pixels"] <= 1 and kappa["images"] == 8 and len(kappa["annotators"]) == 4
    pair = agreement.groupby(["annotator_a", "annotator_b"]).dice.mean()
    assert kappa["pairwise_dice"] == {"low": pytest.approx(pair.min()), "high": pytest.approx(pair.max())}
    staple = pd.read_parquet(out / "staple.parquet")
    assert list(staple.annotator) == kappa["annotators"]
    assert staple.weight.to_numpy() == pytest.approx((staple.sensitivity + staple.specificity).to_numpy())
    table = pd.read_parquet(out / "methods_vs_annotators.parquet")
    assert set(table.method) == {"saliency", "gradcam"}
    assert set(table.reference) == {*kappa["annotators"], ann.ANNOTATORS, "consensus", "staple", "truth"}
    assert set(table.metric) == {"relevance_mass_accuracy", "pointing_game", "auroc", "dice", "iou"}
    assert set(table.verdict) <= {"inside", "below", "above", "undefined"}
    row = table[(table.method == "saliency") & (table.reference == "consensus") & (table.metric == "dice")].iloc[0]
    assert row.expert_low == pytest.approx(pair.min()) and row.expert_high == pytest.approx(pair.max())
    assert row.verdict == ann.verdict(row["mean"], row.expert_low, row.expert_high)
    assert "pairwise Dice" in r.out


def test_cli_annotators_bad_input_is_one_sentence(tmp_path, capsys, bench):
    single = tmp_path / "one.npz"
    np.savez(single, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4) % 2, masks=np.ones((4, 8, 8), bool))
    base = ["annotators", "--model", "small_cnn", "--methods", "saliency", "--out", tmp_path / "o"]
    assert_user_error(run_cli(capsys, *base, "--data", single), r"has no masks from several annotators")
    assert_user_error(
        run_cli(capsys, *base, "--data", bench, "--metrics", "faithfulness_correlation"),
        r"Metric faithfulness_correlation does not compare a map with a mask alone",
    )
    assert_user_error(run_cli(capsys, *base, "--data", bench, "--top-k", "2"), r"--top-k must be a share")
    assert_user_error(run_cli(capsys, *base, "--data", bench, "--staple", "best"), r"--staple must be")
    one = tmp_path / "one_annotator.npz"
    np.savez(one, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4) % 2, masks=np.ones((4, 1, 8, 8), bool))
    assert_user_error(
        run_cli(capsys, *base, "--data", one), r"masks from 1 annotator; comparing annotators needs at least 2"
    )


def test_cli_annotators_with_empty_masks_writes_undefined_values(tmp_path, capsys):
    data = tmp_path / "empty.npz"
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.savez(data, x=x, y=np.arange(4) % 2, masks=np.zeros((4, 2, 8, 8), bool))
    out = tmp_path / "o"
    r = run_cli(capsys, "annotators", "--model", "small_cnn", "--data", data, "--methods", "saliency", "--out", out)
    assert r.code == 0, r.err
    kappa = json.loads((out / "kappa.json").read_text())  # strict JSON: no NaN
    assert kappa["fleiss_kappa_pixels"] is None and kappa["pairwise_dice"] == {"low": None, "high": None}
    assert set(pd.read_parquet(out / "methods_vs_annotators.parquet").verdict) == {"undefined"}
    assert "the experts' range is undefined" in " ".join(r.out.split())


def test_pre_training_sources_of_a_benchmark_with_annotators_draw_none(tmp_path):
    from xaiscope.commands.transfer_job import auto_sources

    generate(tmp_path / "bm", n_train=4, n_test=0, size=32, background="noise", annotators=3)
    sources = auto_sources(tmp_path / "bm")
    assert sources and all(p["annotators"] == 0 for p in sources.values())


def test_a_run_compares_its_methods_with_the_annotators_and_the_report_shows_it(bench, tmp_path):
    from xaiscope.commands.run_job import run
    from xaiscope.report.html import write_report
    from xaiscope.run.config import parse_config

    cfg = {
        "out": str(tmp_path / "run"),
        "data": {"path": str(bench)},
        "models": [{"name": "m", "spec": "small_cnn"}],
        "methods": ["saliency", "random"],
        "metrics": ["relevance_mass_accuracy"],
        "analyses": {"ranking": None, "sensitivity": None, "annotators": {"metrics": ["auroc"], "staple": "em"}},
        "report": {"examples": 0},
    }
    root = run(parse_config(cfg))
    table = pd.read_parquet(root / "analyses" / "annotators" / "methods_vs_annotators.parquet")
    assert set(table.method) == {"saliency", "random"} and set(table.metric) == {"auroc", "dice", "iou"}
    assert (root / "analyses" / "annotators" / "kappa.json").is_file()
    html = write_report(root).read_text()
    assert 'id="annotators"' in html and "methods_vs_annotators" in html and "verdict" in html

"""Lazy sources: every kind gives the same images, the same statistics and the same scores as
the in-memory path; set-level metrics do not depend on the batches; bad images stop or are
skipped for every method alike."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cli_helpers import assert_user_error, run_cli
from xaiscope import data as xdata
from xaiscope import evaluate
from xaiscope.api import evaluate_images
from xaiscope.data.sources import MemorySource, TorchSource
from xaiscope.errors import DataError
from xaiscope.evaluate.setlevel import SetLevelScores

N, H, W = 14, 16, 16
METHODS = ["saliency", "gradcam"]
METRICS = ["sparseness", "pointing_game", "sufficiency", "consistency"]
PARAMS = {"consistency": {"n": 1}, "sufficiency": {"threshold": 0.9}}


def make_arrays(seed: int = 0):
    """uint8 RGB images ``[N, H, W, 3]`` (channels last), labels, blob masks."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    y = np.arange(N) % 2
    masks = np.zeros((N, H, W), bool)
    for i in range(N):
        r, c = rng.integers(2, 10, 2)
        masks[i, r : r + 5, c : c + 5] = True
    return x, y, masks


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_folder(root, x, y, masks):
    for i in range(N):
        c = f"c{y[i]}"
        (root / c).mkdir(parents=True, exist_ok=True)
        (root / "masks" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(root / c / f"{i:02d}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(root / "masks" / c / f"{i:02d}.png")
    return root


def folder_order(y):
    """Positions of the images in a folder's order (class, then file name)."""
    return [i for k in (0, 1) for i in range(N) if y[i] == k]


@pytest.fixture(scope="module")
def arrays():
    return make_arrays()


@pytest.fixture(scope="module")
def reference(arrays):
    """Scores of the in-memory path on the images in folder order."""
    x, y, masks = arrays
    order = folder_order(y)
    xt = torch.from_numpy(x[order]).permute(0, 3, 1, 2)
    df = evaluate_images(
        Net(), (xt, y[order], masks[order]), methods=METHODS, metrics=METRICS, params=PARAMS, images_per_step=1000
    )
    return df


def scores(df):
    return df[["method", "metric", "value"]].reset_index(drop=True)


def test_every_source_kind_gives_the_in_memory_scores(tmp_path, arrays, reference):
    import h5py
    import zarr

    x, y, masks = arrays
    order = folder_order(y)
    xo, yo, mo = x[order], y[order], masks[order]
    folder = write_folder(tmp_path / "folder", x, y, masks)
    np.savez(tmp_path / "plain.npz", x=xo, y=yo, masks=mo)
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"], f["y"], f["masks"] = xo, yo, mo
    g = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    g.create_array("x", data=xo.transpose(0, 3, 1, 2), chunks=(4, 3, H, W))
    g.create_array("y", data=yo)
    g.create_array("masks", data=mo)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            return {"image": torch.from_numpy(xo[i]).permute(2, 0, 1), "label": int(yo[i]), "mask": mo[i]}

    sources = {
        "folder": str(folder),
        "folder, 2 workers": xdata.open_source(folder, workers=2),
        "npz": str(tmp_path / "plain.npz"),
        "hdf5": str(tmp_path / "data.h5"),
        "zarr": str(tmp_path / "data.zarr"),
        "torch Dataset": Items(),
        "DataLoader": torch.utils.data.DataLoader(Items(), batch_size=5),
    }
    for name, src in sources.items():
        for step in (3, 1000):
            df = evaluate_images(Net(), src, methods=METHODS, metrics=METRICS, params=PARAMS, images_per_step=step)
            pd.testing.assert_frame_equal(scores(df), scores(reference), obj=f"{name}, {step} images per step")
    assert reference["value"].notna().all()


def test_streamed_statistics_and_fingerprint_equal_the_in_memory_ones(tmp_path, arrays):
    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    src = xdata.open_source(folder, normalise="dataset")
    ds = xdata.load_folder(folder, normalise="dataset")
    src.settle_normalisation()
    assert src.mean == ds.mean and src.std == ds.std
    ref = torch.from_numpy(x[folder_order(y)]).permute(0, 3, 1, 2).double() / 255
    np.testing.assert_allclose(ds.mean, ref.mean(dim=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, ref.std(dim=(0, 2, 3)), rtol=1e-6)
    assert src.fingerprint() == ds.fingerprint() == MemorySource(ds).fingerprint(batch_size=5)
    streamed = torch.cat([b.x for b in src.batches(4)])
    assert torch.equal(streamed, ds.x)


def test_set_level_scores_do_not_depend_on_batches_or_their_order():
    torch.manual_seed(3)
    patterns = torch.randn(4, 3, 6, 6) * 3
    a = patterns[torch.randint(0, 4, (40,))] + 0.1 * torch.randn(40, 3, 6, 6)  # groups share their top pixels
    pred = torch.randint(0, 3, (40,))
    for name, hp in [("sufficiency", {}), ("consistency", {"n": 2})]:
        metric = evaluate.get_class(name)(**hp)
        whole = metric.set_scores(a, pred).float()
        assert whole.sum() > 0, name
        for step, seed in [(1, 0), (7, 1), (40, 2)]:
            acc = SetLevelScores(metric, 40, (6, 6))
            perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
            for s in range(0, 40, step):
                idx = perm[s : s + step]
                acc.update(idx, a[idx], pred[idx])
            pos, v = acc.compute()
            assert pos.tolist() == list(range(40))
            assert torch.equal(v, whole), (name, step)
        blocked = SetLevelScores(metric, 40, (6, 6), budget_bytes=1024)  # maps in a temporary file, pairs by blocks
        blocked.update(torch.arange(40), a, pred)
        torch.testing.assert_close(blocked.compute()[1], whole)
        blocked.close()


def test_set_level_rows_of_evaluate_do_not_depend_on_images_per_step(reference, arrays):
    x, y, masks = arrays
    order = folder_order(y)
    xt = torch.from_numpy(x[order]).permute(0, 3, 1, 2)
    a = evaluate_images(Net(), (xt, y[order], masks[order]), methods=METHODS, metrics=METRICS, params=PARAMS)
    b = evaluate_images(
        Net(), (xt, y[order], masks[order]), methods=METHODS, metrics=METRICS, params=PARAMS, images_per_step=4
    )
    sl = a["metric"].isin(["sufficiency", "consistency"])
    pd.testing.assert_frame_equal(a[sl], b[sl])
    assert a[sl]["value"].gt(0).any()


def test_corrupt_image_in_a_folder_stops_or_is_skipped_for_every_method(tmp_path, arrays, capsys):
    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    (folder / "c1" / "05.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"c1/05\.png"):
        evaluate_images(Net(), str(folder), methods=METHODS, metrics=["sparseness"])
    out = tmp_path / "run"
    df = evaluate_images(
        Net(), str(folder), methods=METHODS, metrics=["sparseness", "sufficiency"], on_bad_image="skip", out=out
    )
    assert "c1/05" not in set(df["image_id"])
    counts = df.groupby(["method", "metric"]).size()
    assert (counts == N - 1).all(), counts
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["image_id"] for s in manifest["skipped"]] == ["c1/05"]
    assert "c1/05.png" in manifest["skipped"][0]["reason"]
    # the command line: one sentence without --on-bad-image skip, rows for the others with it
    args = ["evaluate", "--model", "small_cnn", "--data", str(folder), "--methods", "saliency"]
    args += ["--metrics", "sparseness", "--out", str(tmp_path / "r.parquet")]
    assert_user_error(run_cli(capsys, *args), r"The image .*c1/05\.png cannot be read")
    assert not (tmp_path / "r.parquet").exists()
    r = run_cli(capsys, *args, "--on-bad-image", "skip", "--workers", "2")
    assert r.code == 0, r.err
    assert "c1/05" in r.out
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == N - 1


def test_hdf5_patchcamelyon_layout_channels_last_uint8(tmp_path, arrays):
    import h5py

    x, y, _ = arrays
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = y.reshape(N, 1, 1, 1).astype(np.uint8)
    src = xdata.open_source(tmp_path / "camelyonpatch_level_2_split_test_x.h5")
    assert src.shape == (3, H, W) and len(src) == N and src.labels.tolist() == y.tolist()
    got = torch.cat([b.x for b in src.batches(5)])
    assert torch.equal(got, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    with h5py.File(tmp_path / "named.h5", "w") as f:
        f["images"], f["labels"] = x, y
    src = xdata.open_source(tmp_path / "named.h5", x_key="images", y_key="labels")
    assert len(src) == N
    with pytest.raises(DataError, match=r"has no array 'x'"):
        xdata.open_source(tmp_path / "named.h5")


def test_medmnist_layout_split_labels_and_refusals(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "pathmnist.npz",
        train_images=rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8),
        train_labels=np.arange(6).reshape(6, 1) % 3,
        test_images=rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8),
        test_labels=np.array([[0], [2], [1], [2]]),
    )
    src = xdata.open_source(tmp_path / "pathmnist.npz")
    assert len(src) == 4 and src.shape == (3, 28, 28) and src.labels.tolist() == [0, 2, 1, 2]
    assert len(xdata.open_source(tmp_path / "pathmnist.npz", split="train")) == 6
    with pytest.raises(DataError, match=r"has no split 'val'; it has train, test"):
        xdata.open_source(tmp_path / "pathmnist.npz", split="val")
    np.savez(
        tmp_path / "chestmnist.npz",
        test_images=np.zeros((3, 28, 28), np.uint8),
        test_labels=np.zeros((3, 14), np.uint8),
    )
    with pytest.raises(DataError, match=r"have 14 columns: a multi-label set"):
        xdata.open_source(tmp_path / "chestmnist.npz")
    np.savez(
        tmp_path / "organmnist3d.npz", test_images=np.zeros((3, 28, 28, 28), np.uint8), test_labels=np.zeros((3, 1))
    )
    with pytest.raises(DataError, match=r"holds volumes \[28, 28, 28\] \(a 3D set\)"):
        xdata.open_source(tmp_path / "organmnist3d.npz")


def test_torch_sources_read_in_their_own_order_and_reject_bad_items():
    x = torch.rand(7, 1, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(7) % 2), batch_size=3)
    src = TorchSource(loader)
    assert [b.ids for b in src.batches(4)] == [["0", "1", "2", "3"], ["4", "5", "6"]]
    assert torch.equal(torch.cat([b.x for b in src.batches(2)]), x)
    with pytest.raises(DataError, match=r"must be \(x, y\), \(x, y, mask\) or a dict"):
        TorchSource([torch.zeros(1, 8, 8)])


def test_explain_streams_into_zarr_with_the_npz_attributions(tmp_path, arrays, capsys):
    import zarr

    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    (folder / "c0" / "04.png").write_bytes(b"broken")
    base = ["explain", "--model", "small_cnn", "--data", str(folder), "--methods", "saliency,gradcam"]
    base += ["--overlays", "2", "--on-bad-image", "skip", "--images-per-step", "3"]
    r = run_cli(capsys, *base, "--out", str(tmp_path / "npz"), "--format", "npz")
    assert r.code == 0, r.err
    r = run_cli(capsys, *base, "--out", str(tmp_path / "z"), "--format", "zarr")
    assert r.code == 0, r.err
    assert "writing zarr" in r.out and "c0/04" in r.out
    g = zarr.open_group(str(tmp_path / "z" / "attributions.zarr"), mode="r")
    for m in ("saliency", "gradcam"):
        with np.load(tmp_path / "npz" / f"{m}.npz") as z:
            assert z["attributions"].shape[0] == N - 1
            np.testing.assert_array_equal(np.asarray(g[m][...]), z["attributions"])
            assert [str(v) for v in np.asarray(g["ids"][...]).tolist()] == list(z["ids"])
    assert dict(g.attrs["skipped"]).keys() == {"c0/04"}
    assert len(list((tmp_path / "z" / "overlays" / "saliency").glob("*.png"))) == 2
    r = run_cli(capsys, *base, "--out", str(tmp_path / "bad"), "--format", "hdf5")
    assert_user_error(r, r"--format must be auto, npz or zarr; got 'hdf5'\.")


def test_convert_writes_a_zarr_store_that_reads_back_the_same_images(tmp_path, arrays, capsys):
    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    r = run_cli(capsys, "convert", str(folder), str(tmp_path / "s.zarr"), "--images-per-step", "4")
    assert r.code == 0, r.err
    assert f"({N} images of [3, {H}, {W}])" in " ".join(r.out.split())
    import zarr

    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["x"].dtype == np.uint8  # 8-bit pixels stay 8-bit
    a, b = xdata.load_folder(folder), xdata.load_zarr(tmp_path / "s.zarr")
    assert torch.equal(a.x, b.x) and torch.equal(a.masks, b.masks) and a.ids == b.ids and a.classes == b.classes
    assert a.fingerprint() == b.fingerprint()
    r = run_cli(capsys, "convert", str(folder), str(tmp_path / "s.zarr"))
    assert_user_error(r, r"The output .*s\.zarr exists already")
    np.savez(tmp_path / "f.npz", x=np.linspace(0, 1, N * 16).reshape(N, 1, 4, 4).astype(np.float32), y=y)
    r = run_cli(capsys, "convert", str(tmp_path / "f.npz"), str(tmp_path / "u.zarr"), "--dtype", "uint8")
    assert_user_error(r, r"are not 8-bit pixels; pass --dtype float32\.")
    assert not (tmp_path / "u.zarr").exists() and not list(tmp_path.glob(".u.zarr*"))
    r = run_cli(capsys, "convert", str(tmp_path / "f.npz"), str(tmp_path / "u.zarr"))
    assert r.code == 0, r.err
    assert torch.equal(xdata.load_zarr(tmp_path / "u.zarr").x, xdata.load_npz(tmp_path / "f.npz").x)


def test_a_run_larger_than_its_memory_budget_reads_each_unit_from_disk_with_the_same_results(
    tmp_path, arrays, monkeypatch, capsys
):
    import yaml

    from xaiscope.run import context

    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    (folder / "c0" / "06.png").write_bytes(b"broken")
    cfg = {
        "data": {"path": str(folder), "on_bad_image": "skip", "workers": 1},
        "models": [{"name": "cnn", "spec": "small_cnn"}],
        "methods": [{"name": "saliency"}, {"name": "gradcam"}],
        "metrics": [{"name": "sparseness"}, {"name": "pointing_game"}, {"name": "sufficiency"}],
        "unit_images": 4,
        "report": {"examples": 2},
    }
    results = {}
    for name, budget in (("memory", context.RUN_MEMORY_BUDGET), ("disk", 1)):
        monkeypatch.setattr(context, "RUN_MEMORY_BUDGET", budget)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / name)}))
        r = run_cli(capsys, "run", str(tmp_path / f"{name}.yaml"))
        assert r.code == 0, r.err
        assert "c0/06" in r.out
        results[name] = pd.read_parquet(tmp_path / name / "results.parquet")
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["skipped_images"] == {"unreadable": ["c0/06"]}
        assert manifest["dataset"]["images"] == N - 1
        assert "Example images are not shown" not in (tmp_path / name / "report.html").read_text()
    pd.testing.assert_frame_equal(results["memory"], results["disk"])
    assert set(results["disk"]["metric"]) == {"sparseness", "pointing_game", "sufficiency"}
    assert (
        json.loads((tmp_path / "memory" / "manifest.json").read_text())["dataset"]["fingerprint"]
        == json.loads((tmp_path / "disk" / "manifest.json").read_text())["dataset"]["fingerprint"]
    )


def test_out_of_memory_halves_the_step_and_gives_the_same_rows(arrays, monkeypatch):
    """A step that runs out of GPU memory is done again in halves: the same rows as without
    the error (deterministic metrics), none lost or doubled; one image that does not fit is
    one sentence."""
    from xaiscope.errors import ModelError
    from xaiscope.explain import gradient

    x, y, masks = arrays
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    kw = dict(
        methods=["saliency"],
        metrics=["sparseness", "pointing_game", "sufficiency"],
        params={"sufficiency": {"threshold": 0.9}},
    )
    ref = evaluate_images(Net(), (xt, y, masks), **kw)
    real = gradient.SaliencyExplainer._attribute
    calls = []

    def tight(self, model, x, y):
        calls.append(len(x))
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, x, y)

    monkeypatch.setattr(gradient.SaliencyExplainer, "_attribute", tight)
    got = evaluate_images(Net(), (xt, y, masks), images_per_step=N, **kw)
    pd.testing.assert_frame_equal(got, ref)
    assert calls[:2] == [N, N // 2] and sum(c for c in calls if c <= 4) == N  # each image explained once
    monkeypatch.setattr(
        gradient.SaliencyExplainer, "_attribute", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("x"))
    )
    with pytest.raises(ModelError, match=r"ran out of memory on the single image '0'; lower --batch-size"):
        evaluate_images(Net(), (xt, y, masks), **kw)


def test_global_maps_and_peppr_stream_with_the_in_memory_numbers(tmp_path, arrays, capsys):
    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    base = ["global", "--model", "small_cnn", "--data", str(folder), "--method", "saliency", "--step", "0.25"]
    base += ["--random-orders", "2", "--fill", "blur"]
    for name, step in (("whole", "1000"), ("steps", "3")):
        r = run_cli(capsys, *base, "--out", str(tmp_path / name), "--images-per-step", step)
        assert r.code == 0, r.err
    a, b = np.load(tmp_path / "whole" / "global_maps.npz"), np.load(tmp_path / "steps" / "global_maps.npz")
    for key in ("label_maps", "label_sd", "overall", "overall_sd", "counts"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-9, err_msg=key)
    # the same maps from the in-memory definition
    ds = xdata.load_folder(folder)
    from xaiscope.analyses.global_maps import global_maps

    assert torch.equal(torch.from_numpy(a["counts"]), global_maps(torch.rand(N, H, W), ds.y).counts)
    sa = json.loads((tmp_path / "whole" / "summary.json").read_text())
    sb = json.loads((tmp_path / "steps" / "summary.json").read_text())
    assert sa["passes"] == sb["passes"]
    for label, res in sa["peppr"].items():
        assert res["score_auroc"] == pytest.approx(sb["peppr"][label]["score_auroc"], abs=1e-6)
        assert res["score_accuracy"] == pytest.approx(sb["peppr"][label]["score_accuracy"], abs=1e-6)


def test_variability_streams_from_a_folder_with_its_sums_on_disk(tmp_path, arrays, monkeypatch):
    import importlib

    from xaiscope import explain

    var = importlib.import_module("xaiscope.analyses.variability")  # the module (the package exports the function)

    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(Net())
    ex = explain.get("saliency")
    ref = var.variability(nets, xdata.load_folder(folder), ex, foreground=xdata.load_folder(folder).masks)
    monkeypatch.setattr(var, "MAPS_BUDGET", 1)  # the running sums in a memory-mapped file
    acc = var.VariabilityAccumulator(xdata.open_source(folder), ex, foreground="masks", step_images=3, batch_size=2)
    assert acc.maps._tmp is not None
    for net in nets:
        acc.update(net)
    got = acc.result()
    for key in ("mean_map", "sd_map", "attention_sd", "attention_sd_fg", "correct_mean", "prob_sd", "spearman_mean"):
        torch.testing.assert_close(getattr(got, key), getattr(ref, key), rtol=1e-5, atol=1e-7, equal_nan=True)
    assert got.ids == ref.ids


def test_sis_reads_only_the_images_it_explains_and_counts_all(tmp_path, arrays, capsys):
    x, y, masks = arrays
    folder = write_folder(tmp_path / "f", x, y, masks)
    for tau in ("0.5495", "0.999999"):
        out = tmp_path / f"sis{tau}"
        r = run_cli(
            capsys, "sis", "--model", "small_cnn", "--data", str(folder), "--class", "1", "--tau", tau,
            "--max-images", "2", "--unit", "patch:8", "--out", str(out), "--images-per-step", "5",
        )  # fmt: skip
        assert r.code == 0, r.err
        summary = json.loads((out / "summary.json").read_text())["models"][0]
        assert summary["n_images"] == N and summary["n_explained"] == min(2, summary["n_decision"])
        assert (summary["n_decision"] > 0) == (tau == "0.5495")


def write_ome_zarr(path, image_yxc: np.ndarray, version: str = "0.4") -> None:
    """One OME-Zarr image (``multiscales``, axes c, y, x; two levels) as a pathology viewer writes it."""
    import zarr

    g = zarr.open_group(str(path), mode="w")
    cyx = np.ascontiguousarray(image_yxc.transpose(2, 0, 1))
    g.create_array("0", data=cyx, chunks=(1, 8, 8))
    g.create_array("1", data=cyx[:, ::2, ::2])
    ms = [
        {
            "version": version,
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    g.attrs.update({"ome": {"version": version, "multiscales": ms}} if version == "0.5" else {"multiscales": ms})


def test_a_folder_of_ome_zarr_images_reads_like_the_same_pngs(tmp_path, arrays):
    x, y, masks = arrays
    png = write_folder(tmp_path / "png", x, y, masks)
    root = tmp_path / "ome"
    for i in range(N):
        c = f"c{y[i]}"
        (root / c).mkdir(parents=True, exist_ok=True)
        write_ome_zarr(root / c / f"{i:02d}.ome.zarr", x[i], version="0.5" if i % 2 else "0.4")
    a, b = xdata.load_folder(png, masks="none"), xdata.load_folder(root)
    assert a.ids == b.ids and torch.equal(a.x, b.x)
    g = __import__("zarr").open_group(str(root / "c0" / "00.ome.zarr"), mode="a")
    g.attrs.update({"multiscales": [{"axes": ["z", "y", "x"], "datasets": [{"path": "z"}]}]})
    g.create_array("z", data=np.zeros((2, H, W), np.uint8))
    with pytest.raises(DataError, match=r"00\.ome\.zarr has 2 planes along 'z'"):
        xdata.load_folder(root)


def test_a_corrupt_chunk_in_a_zarr_store_names_the_image_or_is_skipped(tmp_path, arrays):
    import zarr

    x, y, masks = arrays
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("x", data=x.transpose(0, 3, 1, 2), chunks=(2, 3, H, W))
    g.create_array("y", data=y)
    chunk = next(p for p in (tmp_path / "d.zarr" / "x" / "c" / "3").rglob("*") if p.is_file())  # images 6, 7
    chunk.write_bytes(b"this is not a compressed chunk")
    with pytest.raises(DataError, match=r"The image at index 6 \('6'\) of .*d\.zarr cannot be read"):
        evaluate_images(Net(), str(tmp_path / "d.zarr"), methods=["saliency"], metrics=["sparseness"])
    df = evaluate_images(
        Net(), str(tmp_path / "d.zarr"), methods=["saliency"], metrics=["sparseness"], on_bad_image="skip"
    )
    assert sorted(set(df["image_id"]), key=int) == [str(i) for i in range(N) if i not in (6, 7)]

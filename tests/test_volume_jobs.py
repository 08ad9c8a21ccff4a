"""The commands on volumes: ``xaiscope explain`` on a NIfTI folder writes maps that open aligned
with the scans (NIfTI with the input's affine) and four-view overlays."""

from __future__ import annotations

import numpy as np

from cli_helpers import run_cli
from volume_helpers import oblique_affine, write_nifti
from xaiscope.data import volumes


def nifti_folder(root, n: int = 2, shape_ijk=(10, 6, 8)):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for k in range(n):
            write_nifti(root / cls / f"{cls}{k}.nii.gz", rng.random(shape_ijk).astype(np.float32), oblique_affine())
            m = np.zeros(shape_ijk, np.uint8)
            m[2:6, 1:4, 2:5] = 1
            write_nifti(root / "masks" / cls / f"{cls}{k}.nii.gz", m, oblique_affine())
    return root


def test_explain_on_nifti_volumes_writes_aligned_nifti_maps(tmp_path, capsys):
    data = nifti_folder(tmp_path / "data")
    out = tmp_path / "out"
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "fixture_models:conv3d",
        "--data",
        data,
        "--methods",
        "saliency,occlusion",
        "-p",
        "occlusion.window=4",
        "--out",
        out,
        "--overlays",
        "1",
    )
    assert r.code == 0, r.out
    z = np.load(out / "saliency.npz")
    a = z["attributions"]
    vol, aff = volumes.read_volume(data / "a" / "a0.nii.gz", 10**9)
    assert a.shape == (4, *vol.shape)  # [N, C, D, H, W]
    assert list(z["ids"]) == ["a/a0", "a/a1", "b/b0", "b/b1"]
    for method in ("saliency", "occlusion"):
        written = out / "nifti" / method / "b_b1.nii.gz"
        back, back_aff = volumes.read_volume(written, 10**9)
        expected = np.load(out / f"{method}.npz")["attributions"][3].sum(axis=0)
        assert np.allclose(back[0], expected, atol=1e-6)
        assert np.allclose(back_aff, aff)  # opens aligned with the scan
        import nibabel as nib

        raw = nib.load(str(written))
        assert np.allclose(raw.affine, aff) and raw.header.get_xyzt_units()[0] in ("unknown", "mm")
    assert (out / "overlays" / "saliency" / "a_a0.png").is_file()


def test_resize_resamples_volumes_and_their_affines(tmp_path, capsys):
    data = nifti_folder(tmp_path / "data", n=1)
    out = tmp_path / "out"
    r = run_cli(
        capsys, "explain", "--model", "fixture_models:conv3d", "--data", data, "--methods", "saliency",
        "--out", out, "--resize", "4,6,5", "--overlays", "0",
    )  # fmt: skip
    assert r.code == 0, r.out
    assert np.load(out / "saliency.npz")["attributions"].shape == (2, 1, 4, 6, 5)
    native_shape, native_aff = volumes.volume_geometry(data / "a" / "a0.nii.gz")
    _, aff = volumes.read_volume(out / "nifti" / "saliency" / "a_a0.nii.gz", 10**9)
    assert np.allclose(aff, volumes.resized_affine(native_aff, native_shape, (4, 6, 5)))


def test_bad_resize_values_are_one_sentence(tmp_path, capsys):
    from cli_helpers import assert_user_error

    data = nifti_folder(tmp_path / "data", n=1)
    for bad in ("4,5,6,7", "0,4,4", "a,b"):
        r = run_cli(capsys, "explain", "--model", "fixture_models:conv3d", "--data", data, "--out", tmp_path / "o",
                    "--resize", bad)  # fmt: skip
        assert_user_error(r, r"--resize must be H,W or D,H,W with whole numbers >= 1")
    r = run_cli(capsys, "explain", "--model", "fixture_models:conv3d", "--data", data, "--out", tmp_path / "o",
                "--resize", "8,8")  # fmt: skip
    assert_user_error(r, r"is a volume; resizing it needs D,H,W, got 8,8")


def test_evaluate_and_run_score_volumes_and_the_report_shows_them(tmp_path, capsys):
    import pandas as pd
    import yaml

    from xaiscope.run.store import RunStore

    data = nifti_folder(tmp_path / "data")
    r = run_cli(
        capsys, "evaluate", "--model", "fixture_models:conv3d", "--data", data, "--methods", "saliency,gradcam",
        "--metrics", "relevance_mass_accuracy,sparseness,deletion", "-p", "deletion.steps=4", "--out", tmp_path / "e.parquet",
    )  # fmt: skip
    assert r.code == 0, r.out
    scores = pd.read_parquet(tmp_path / "e.parquet")
    assert len(scores) == 4 * 2 * 3 and scores["value"].notna().all()
    cfg = {
        "out": str(tmp_path / "run"),
        "unit_images": 2,
        "data": {"path": str(data)},
        "models": [{"name": "c3", "spec": "fixture_models:conv3d"}],
        "methods": ["saliency", "gradcam", "random"],
        "metrics": ["pointing_game", "sparseness", {"name": "max_sensitivity", "hparams": {"nr_samples": 2}}],
        "analyses": {"ranking": {"draws": 50}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli(capsys, "run", tmp_path / "c.yaml")
    assert r.code == 0, r.out
    store = RunStore(tmp_path / "run")
    shape = volumes.volume_geometry(data / "a" / "a0.nii.gz")[0]
    assert store.attributions("c3", "gradcam", "default").shape == (4, 1, *shape)
    results = store.results()
    assert len(results) == 4 * 3 * 3 and results["value"].notna().all()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "axial d=" not in html  # views are drawn into the example images, not written as text
    assert html.count("data:image/png;base64,") >= 4


def test_normalise_images_dataset_and_given_values(tmp_path, capsys):
    from cli_helpers import assert_user_error

    data = nifti_folder(tmp_path / "data")
    base = ["explain", "--model", "fixture_models:conv3d", "--data", data, "--methods", "input", "--overlays", "0"]
    r = run_cli(capsys, *base, "--out", tmp_path / "raw")
    assert r.code == 0, r.out
    raw = np.load(tmp_path / "raw" / "input.npz")["attributions"].astype(np.float64)
    r = run_cli(capsys, *base, "--out", tmp_path / "ds", "--normalise-images", "dataset")
    assert r.code == 0, r.out
    ds = np.load(tmp_path / "ds" / "input.npz")["attributions"].astype(np.float64)
    np.testing.assert_allclose(ds, (raw - raw.mean()) / raw.std(ddof=1), atol=1e-5)
    r = run_cli(capsys, *base, "--out", tmp_path / "given", "--normalise-images", "0.5/0.25")
    assert r.code == 0, r.out
    np.testing.assert_allclose(np.load(tmp_path / "given" / "input.npz")["attributions"], (raw - 0.5) / 0.25, atol=1e-5)
    for bad in ("0.5", "0.5/0", "1,2/3", "mean"):
        r = run_cli(capsys, *base, "--out", tmp_path / "bad", "--normalise-images", bad)
        assert_user_error(r, "--normalise-images must be none, dataset or MEANS/STDS")

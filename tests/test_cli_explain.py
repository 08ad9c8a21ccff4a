"""``xaiscope methods`` and ``xaiscope explain`` as a user runs them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cli_helpers import assert_user_error, run_cli, run_cli_subprocess
from xaiscope import explain


def _folder(root, n=3, size=16, channels=1):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size, size) if channels == 1 else (size, size, channels)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_methods_lists_every_method(capsys):
    r = run_cli(capsys, "methods")
    assert r.code == 0
    for name in explain.names():
        assert name[:12] in r.out


def test_explain_writes_attributions_and_overlays(tmp_path, capsys):
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
        "saliency,integrated_gradients",
        "--out",
        out,
        "--overlays",
        "2",
        "-p",
        "integrated_gradients.n_steps=8",
        "--batch-size",
        "4",
    )
    assert r.code == 0, r.err
    with np.load(out / "integrated_gradients.npz") as z:
        assert z["attributions"].shape == (6, 1, 16, 16)
        assert list(z["ids"]) == ["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"]
        assert z["targets"].tolist() == [0, 0, 0, 1, 1, 1]
        assert "n_steps': 8" in str(z["hparams"])
    assert len(list((out / "overlays" / "saliency").glob("*.png"))) == 2


def test_explain_target_pred_and_fixed_class(tmp_path, capsys):
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
        "--target",
        "1",
        "--overlays",
        "0",
    )
    assert r.code == 0, r.err
    with np.load(tmp_path / "o" / "saliency.npz") as z:
        assert set(z["targets"].tolist()) == {1}
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
        "--target",
        "7",
    )
    assert_user_error(r, "--target 7 is not a class of the model")


def test_explain_user_errors(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "o"
    assert_user_error(
        run_cli(capsys, "explain", "--model", "small_cnn", "--data", tmp_path / "nope", "--out", out),
        "The data folder .*nope does not exist",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "smal_cnn", "--data", data, "--out", out),
        "The model spec 'smal_cnn' is not a file, a zoo name",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "small_cnn", "--data", data, "--out", out, "--methods", "saliancy"),
        "Unknown method 'saliancy' \\(did you mean 'saliency'\\?\\)",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", str(tmp_path / "m.pt"), "--data", data, "--out", out),
        "The model file .*m.pt does not exist",
    )
    torch.save(
        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).state_dict(),
        tmp_path / "w3.pt",
    )
    assert_user_error(
        run_cli(
            capsys,
            "explain",
            "--model",
            "xaiscope.models.zoo:small_cnn",
            "--data",
            _folder(tmp_path / "rgb", channels=3),
            "--out",
            out,
            "--weights",
            str(tmp_path / "w3.pt"),
        ),
        "weights in .*w3.pt do not fit the model",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "small_cnn", "--data", data, "--out", out, "-p", "saliency.abs=3"),
        "'abs' of saliency must be bool, got 3",
    )


def test_bad_models_from_cli(tmp_path, capsys):
    gray = _folder(tmp_path / "gray")
    out = tmp_path / "o"
    assert_user_error(
        run_cli(capsys, "explain", "--model", "fixture_models:rgb_only", "--data", gray, "--out", out),
        "The model cannot process images of shape \\[1, 16, 16\\]",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "fixture_models:tuple_output", "--data", gray, "--out", out),
        "must return a tensor \\[N, classes\\], but it returned a tuple",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "fixture_models:scalar_output", "--data", gray, "--out", out),
        "returned shape \\[2\\]",
    )
    assert_user_error(
        run_cli(capsys, "explain", "--model", "fixture_models:single_output", "--data", gray, "--out", out),
        "has label 1 \\('b'\\) but the model has only 1 outputs",
    )


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    r = run_cli_subprocess("explain", "--model", "small_cnn", "--data", tmp_path / "missing", "--out", tmp_path / "o")
    assert_user_error(r, "The data folder .*missing does not exist")
    r = run_cli_subprocess(
        "--debug", "explain", "--model", "small_cnn", "--data", tmp_path / "missing", "--out", tmp_path / "o"
    )
    assert r.code != 0 and "Traceback" in r.err

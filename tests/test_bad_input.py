"""A corpus of bad inputs, each run as a user would, each with the exact error it must give.

Every case works in a copy of one workspace (``data/`` with masks, ``d.npz`` and an
``out/`` folder holding earlier results: ``saliency.npz`` + overlay from ``xaiscope
explain``, ``scores.parquet`` from ``xaiscope evaluate``, a finished run in ``out/run``
from ``xaiscope run``). A case may spoil the data or the config, then runs one command
that writes into ``out/``. It must exit 2 with one sentence matching the case's pattern
(naming the offending file, key or value) and no traceback, and every file under ``out/``
must be byte-identical afterwards, with no new (or temporary) file.

Paths in configs are relative to the workspace (the test changes into it), so a copied
workspace holds the same run as the original.

Read-only output folders: the tests run as root, for whom ``chmod`` does not stop
writes, so "read-only" is simulated by making ``os.access(folder, W_OK)`` answer False
(what ``xaiscope.io.ensure_dir`` checks), and "cannot be created" by asking for a folder
inside a file. "Disk full" is simulated by making the writer (``DataFrame.to_parquet``,
``np.savez_compressed``) write a few bytes into its temporary file and then raise
``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from cli_helpers import assert_user_error, run_cli, run_cli_subprocess
from reliability_helpers import make_folder, make_npz, snapshot, temp_files, write_1bit_png, write_png
from xaiscope.errors import ConfigError

RUN_CONFIG = {
    "out": "out/run",
    "seed": 0,
    "batch_size": 16,
    "unit_images": 6,
    "data": {"path": "data"},
    "models": [{"name": "cnn", "spec": "fixture_models:seeded_cnn"}],
    "methods": ["saliency"],
    "metrics": ["sparseness", "relevance_mass_accuracy"],
    "analyses": {"ranking": None, "sensitivity": None},
}
EXPLAIN = [
    "explain",
    "--model",
    "fixture_models:seeded_cnn",
    "--data",
    "data",
    "--methods",
    "saliency",
    "--out",
    "out",
    "--overlays",
    "1",
]
EVALUATE = [
    "evaluate",
    "--model",
    "fixture_models:seeded_cnn",
    "--data",
    "data",
    "--methods",
    "saliency",
    "--metrics",
    "sparseness",
    "--out",
    "out/scores.parquet",
]


def write_config(ws: Path, name: str = "config.yaml", **changes) -> str:
    """A copy of the run config with top-level ``changes`` (``data=`` replaces the data section)."""
    cfg = {**RUN_CONFIG, **changes}
    (ws / name).write_text(yaml.safe_dump(cfg))
    return name


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The workspace every case copies, with earlier results made by the real commands."""
    ws = tmp_path_factory.mktemp("template")
    make_folder(ws / "data", n=3, masks=True)
    make_folder(ws / "nomask", n=3, masks=False)
    (ws / "empty").mkdir()
    make_npz(ws / "d.npz", n=6)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        from xaiscope.cli import main

        for args in (EXPLAIN, EVALUATE, ["run", write_config(ws), "--no-report"]):
            try:
                main(list(args))
            except SystemExit as e:
                assert not e.code, args
    finally:
        os.chdir(cwd)
    assert (ws / "out" / "saliency.npz").exists() and (ws / "out" / "scores.parquet").exists()
    assert (ws / "out" / "run" / "results.parquet").exists()
    return ws


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    w = tmp_path / "ws"
    shutil.copytree(template, w)
    monkeypatch.chdir(w)
    return w


def _disk_full_after(n_bytes: int):
    """A writer that puts ``n_bytes`` into its target, then fails as on a full disk."""

    def writer(self_or_file, path=None, *args, **kwargs):
        target = path if path is not None and not hasattr(self_or_file, "write") else self_or_file
        if hasattr(target, "write"):
            target.write(b"\0" * n_bytes)
        else:
            Path(target).write_bytes(b"\0" * n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return writer


def _read_only(monkeypatch, folder: str):
    real = os.access

    def access(path, mode, *a, **k):
        if Path(path).resolve() == Path(folder).resolve() and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)


@dataclass
class Case:
    id: str
    setup: Callable  # (ws, monkeypatch) -> list of CLI arguments
    pattern: str


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _npz_with(ws: Path, name: str, **arrays) -> str:
    base = dict(np.load(ws / "d.npz"))
    base.update(arrays)
    np.savez(ws / name, **base)
    return name


def _npz_value(ws: Path, name: str, index: int, value: float) -> str:
    x = np.load(ws / "d.npz")["x"].copy()
    x[index, 0, 3, 3] = value
    return _npz_with(ws, name, x=x)


CASES = [
    # ---------------------------------------------------------------- data
    Case(
        "missing-data-folder",
        lambda ws, mp: [*EVALUATE[:4], "missing", *EVALUATE[5:]],
        r"The data folder missing does not exist\.",
    ),
    Case(
        "empty-data-folder",
        lambda ws, mp: ["run", write_config(ws, out="out/run2", data={"path": "empty"})],
        r"The data folder empty contains no images \(expected empty/<class>/<id>\.png\)\.",
    ),
    Case(
        "data-path-is-a-file",
        lambda ws, mp: ((ws / "config.txt").write_text("x"), [*EXPLAIN[:4], "config.txt", *EXPLAIN[5:]])[1],
        r"The data path config\.txt is not a folder\.",
    ),
    Case(
        "truncated-png",
        lambda ws, mp: (_truncate(ws / "data" / "a" / "1.png"), EXPLAIN)[1],
        r"The image data/a/1\.png cannot be read; it is not a valid image or it is truncated",
    ),
    Case(
        "garbage-png",
        lambda ws, mp: ((ws / "data" / "b" / "2.png").write_bytes(b"not a png at all"), EVALUATE)[1],
        r"The image data/b/2\.png cannot be read; it is not a valid image or it is truncated",
    ),
    Case(
        "decompression-bomb-png",
        lambda ws, mp: (
            write_1bit_png(ws / "data" / "a" / "9.png", 20000, 20000),
            write_1bit_png(ws / "data" / "masks" / "a" / "9.png", 16, 16),  # every image has a mask
            EXPLAIN,
        )[-1],
        r"The image data/a/9\.png has 400,000,000 pixels, more than the limit of 89,478,485 that guards against "
        r"decompression bombs; pass --max-image-pixels 400000000 \(or more\) if you trust it\.",
    ),
    Case(
        "decompression-bomb-mask",
        lambda ws, mp: (write_1bit_png(ws / "data" / "masks" / "b" / "1.png", 12000, 9000), ["run", "config.yaml"])[1],
        r"The image data/masks/b/1\.png has 108,000,000 pixels, more than the limit of 89,478,485",
    ),
    Case(
        "image-over-max-image-pixels",
        lambda ws, mp: ["run", "config.yaml", "--max-image-pixels", "255"],
        r"The image data/a/0\.png has 256 pixels, more than the limit of 255 that guards against decompression "
        r"bombs; pass --max-image-pixels 256 \(or more\) if you trust it\.",
    ),
    Case(
        "garbage-tiff",
        lambda ws, mp: ((ws / "data" / "b" / "9.tif").write_bytes(b"II*\x00" + b"\x13" * 40), EXPLAIN)[1],
        r"The image data/b/9\.tif cannot be read; it holds no image data \(a damaged TIFF file\?\)\.",
    ),
    Case(
        "tiff-bad-first-page",
        lambda ws, mp: ((ws / "data" / "b" / "9.tif").write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\xff" * 40), EXPLAIN)[
            1
        ],
        r"The image data/b/9\.tif cannot be read \(TiffFileError\)\.",
    ),
    Case(
        "tiff-uint32",
        lambda ws, mp: (tifffile.imwrite(ws / "data" / "a" / "9.tif", np.ones((16, 16), np.uint32)), EXPLAIN)[1],
        r"The image data/a/9\.tif has unsupported pixel type uint32; use 8- or 16-bit unsigned integers or float32\.",
    ),
    Case(
        "mixed-sizes",
        lambda ws, mp: (write_png(ws / "data" / "b" / "9.png", np.zeros((12, 16), np.uint8)), EXPLAIN)[1],
        r"The image data/b/9\.png is 16x12 but data/a/0\.png is 16x16; pass a resize option to use images of different sizes\.",
    ),
    Case(
        "mixed-channels",
        lambda ws, mp: (write_png(ws / "data" / "b" / "9.png", np.zeros((16, 16, 3), np.uint8)), EXPLAIN)[1],
        r"The image data/b/9\.png has 3 channel\(s\) but data/a/0\.png has 1; convert them to one colour mode\.",
    ),
    Case(
        "mask-size-differs",
        lambda ws, mp: (
            write_png(ws / "data" / "masks" / "a" / "1.png", np.zeros((8, 8), np.uint8)),
            ["run", "config.yaml"],
        )[1],
        r"The mask data/masks/a/1\.png is 8x8 but its image is 16x16\.",
    ),
    Case(
        "mask-without-image",
        lambda ws, mp: (write_png(ws / "data" / "masks" / "b" / "7.png", np.zeros((16, 16), np.uint8)), EVALUATE)[1],
        r"The mask data/masks/b/7\.png has no matching image data/b/7\.\*\.",
    ),
    Case(
        "image-without-mask",
        lambda ws, mp: ((ws / "data" / "masks" / "b" / "2.png").unlink(), ["run", "config.yaml"])[1],
        r"The image data/b/2\.png has no mask in data/masks; every image needs one\.",
    ),
    Case(
        "masks-required-but-absent",
        lambda ws, mp: ["run", write_config(ws, out="out/run2", data={"path": "nomask", "masks": "required"})],
        r"Masks are required but nomask/masks does not exist\.",
    ),
    Case(
        "localisation-metric-without-masks-evaluate",
        lambda ws, mp: [*EVALUATE[:4], "nomask", *EVALUATE[5:8], "relevance_mass_accuracy", *EVALUATE[9:]],
        r"Metric relevance_mass_accuracy is a localisation metric and needs masks, but the data in nomask has none\.",
    ),
    Case(
        "localisation-metric-without-masks-run",
        lambda ws, mp: ["run", write_config(ws, out="out/run2", data={"path": "nomask"})],
        r"metrics: relevance_mass_accuracy is a localisation metric and needs masks, but nomask has none\.",
    ),
    Case(
        "non-binary-mask",
        lambda ws, mp: (
            write_png(
                ws / "data" / "masks" / "a" / "0.png",
                np.repeat(np.array([0, 128, 255], np.uint8), 86)[:256].reshape(16, 16),
            ),
            EXPLAIN,
        )[1],
        r"The mask data/masks/a/0\.png is not binary; it has 3 distinct values\.",
    ),
    Case(
        "nan-in-npz",
        lambda ws, mp: [*EVALUATE[:4], _npz_value(ws, "nan.npz", 3, np.nan), *EVALUATE[5:]],
        r"The image 'img03' in nan\.npz contains NaN or infinite values\.",
    ),
    Case(
        "inf-in-npz",
        lambda ws, mp: [*EXPLAIN[:4], _npz_value(ws, "inf.npz", 5, -np.inf), *EXPLAIN[5:]],
        r"The image 'img05' in inf\.npz contains NaN or infinite values\.",
    ),
    Case(
        "npz-without-labels",
        lambda ws, mp: (
            np.savez(ws / "nolab.npz", x=np.zeros((2, 1, 4, 4), np.float32)),
            [*EXPLAIN[:4], "nolab.npz", *EXPLAIN[5:]],
        )[1],
        r"The data file nolab\.npz has no array 'y'\.",
    ),
    Case(
        "npz-non-binary-masks",
        lambda ws, mp: [*EXPLAIN[:4], _npz_with(ws, "m.npz", masks=np.full((6, 16, 16), 3, np.uint8)), *EXPLAIN[5:]],
        r"The array 'masks' in m\.npz is not binary\.",
    ),
    Case(
        "labels-out-of-range",
        lambda ws, mp: [*EVALUATE[:4], _npz_with(ws, "three.npz", y=np.array([0, 1, 2, 0, 1, 2])), *EVALUATE[5:]],
        r"The data in three\.npz has label 2 \('2'\) but the model has only 2 outputs\.",
    ),
    # ---------------------------------------------------------------- models
    Case(
        "model-returns-tuple",
        lambda ws, mp: [
            "run",
            write_config(ws, out="out/run2", models=[{"name": "t", "spec": "fixture_models:tuple_output"}]),
        ],
        r"The model must return a tensor \[N, classes\], but it returned a tuple\.",
    ),
    Case(
        "model-output-wrong-rank",
        lambda ws, mp: [*EVALUATE[:2], "fixture_models:scalar_output", *EVALUATE[3:]],
        r"The model must return a tensor \[N, classes\], but for 1 images it returned shape \[2\]\.",
    ),
    Case(
        "rgb-model-gray-images",
        lambda ws, mp: [
            "run",
            write_config(ws, out="out/run2", models=[{"name": "rgb", "spec": "fixture_models:rgb_only"}]),
        ],
        r"The model cannot process images of shape \[1, 16, 16\] from data: ",
    ),
    Case(
        "cam-on-model-without-conv",
        lambda ws, mp: [*EXPLAIN[:2], "reliability_helpers:mlp", *EXPLAIN[3:6], "gradcam", *EXPLAIN[7:]],
        r"gradcam needs a model with a Conv2d or Conv3d layer, and this model has none; pass layer=NAME to choose one\.",
    ),
    Case(
        "corrupt-weights",
        lambda ws, mp: ((ws / "junk.pt").write_bytes(os.urandom(300)), [*EXPLAIN, "--weights", "junk.pt"])[1],
        r"The weights file junk\.pt is not a plain state dict that loads with weights_only=True",
    ),
    Case(
        "unknown-zoo-architecture",
        lambda ws, mp: ["train", "--data", "data", "--out", "out/m.pt", "--arch", "small_vgq", "--epochs", "1"],
        r"Unknown architecture 'small_vgq' \(did you mean 'small_vgg'\?\)",
    ),
    # ---------------------------------------------------------------- methods, metrics, hyperparameters
    Case(
        "unknown-method",
        lambda ws, mp: [*EVALUATE[:6], "saliency,gradcm", *EVALUATE[7:]],
        r"Unknown method 'gradcm' \(did you mean 'gradcam'\?\); run 'xaiscope methods' to list them\.",
    ),
    Case(
        "unknown-metric",
        lambda ws, mp: [*EVALUATE[:8], "sparseness,delition", *EVALUATE[9:]],
        r"Unknown metric 'delition' \(did you mean 'deletion'\?\); run 'xaiscope metrics' to list them\.",
    ),
    Case(
        "unknown-hyperparameter",
        lambda ws, mp: [*EXPLAIN[:6], "integrated_gradients", *EXPLAIN[7:], "-p", "integrated_gradients.n_step=8"],
        r"integrated_gradients has no hyperparameter 'n_step' \(did you mean 'n_steps'\?\)",
    ),
    Case(
        "hyperparameter-wrong-type",
        lambda ws, mp: [
            "run",
            write_config(ws, methods=[{"name": "integrated_gradients", "hparams": {"n_steps": "many"}}]),
        ],
        r"methods\.0 \(integrated_gradients\): Hyperparameter 'n_steps' of integrated_gradients must be int, got 'many'\.",
    ),
    Case(
        "hyperparameter-out-of-range",
        lambda ws, mp: [*EXPLAIN[:6], "integrated_gradients", *EXPLAIN[7:], "-p", "integrated_gradients.n_steps=0"],
        r"Hyperparameter 'n_steps' of integrated_gradients must be >= 1, got 0\.",
    ),
    Case(
        "grid-value-out-of-range",
        lambda ws, mp: [
            "run",
            write_config(ws, methods=["saliency", {"name": "occlusion", "grid": {"window": [4, -2]}}]),
        ],
        r"methods\.1 \(occlusion\): Hyperparameter 'window' of occlusion must be >= 1, got -2\.",
    ),
    Case(
        "metric-setting-out-of-range",
        lambda ws, mp: [*EVALUATE[:8], "deletion", *EVALUATE[9:], "-p", "deletion.steps=0"],
        r"Setting 'steps' of deletion must be >= 1, got 0\.",
    ),
    Case(
        "metric-setting-unknown",
        lambda ws, mp: ["run", write_config(ws, metrics=[{"name": "deletion", "hparams": {"stepz": 4}}])],
        r"metrics\.0 \(deletion\): Metric deletion has no setting 'stepz' \(did you mean 'steps'\?\)",
    ),
    Case(
        "param-without-equals",
        lambda ws, mp: [*EXPLAIN, "-p", "saliency"],
        r"The setting 'saliency' must look like METHOD\.NAME=VALUE\.",
    ),
    Case(
        "param-for-absent-method",
        lambda ws, mp: [*EXPLAIN, "-p", "gradcam.relu=false"],
        r"--param names method 'gradcam', which is not in --methods\.",
    ),
    Case(
        "bad-target",
        lambda ws, mp: [*EXPLAIN, "--target", "best"],
        r"--target must be 'true', 'pred' or a class index, got 'best'\.",
    ),
    # ---------------------------------------------------------------- configs
    Case("config-missing", lambda ws, mp: ["run", "nope.yaml"], r"The config file nope\.yaml does not exist\."),
    Case(
        "config-invalid-yaml",
        lambda ws, mp: (
            (ws / "bad.yaml").write_text("seed: 0\ndata:\n  path: [data\nmethods: x\n"),
            ["run", "bad.yaml"],
        )[1],
        r"The config file bad\.yaml is not valid YAML at line 4, column 8\.",
    ),
    Case(
        "config-not-a-mapping",
        lambda ws, mp: ((ws / "list.yaml").write_text("- saliency\n- gradcam\n"), ["run", "list.yaml"])[1],
        r"list\.yaml: the configuration must be a mapping of keys to values\.",
    ),
    Case(
        "config-unknown-top-level-key",
        lambda ws, mp: ["run", write_config(ws, metrix=["sparseness"])],
        r"config\.yaml: metrix: unknown key\.",
    ),
    Case(
        "config-unknown-nested-key",
        lambda ws, mp: ["run", write_config(ws, data={"path": "data", "resise": [8, 8]})],
        r"config\.yaml: data\.resise: unknown key\.",
    ),
    Case(
        "config-unknown-deep-key",
        lambda ws, mp: ["run", write_config(ws, analyses={"ranking": {"drawz": 10}})],
        r"config\.yaml: analyses\.ranking\.drawz: unknown key\.",
    ),
    Case(
        "config-value-out-of-range",
        lambda ws, mp: ["run", write_config(ws, batch_size=0)],
        r"config\.yaml: batch_size: Input should be greater than or equal to 1\.",
    ),
    Case(
        "config-required-key-missing",
        lambda ws, mp: (
            (ws / "nomodels.yaml").write_text(yaml.safe_dump({k: v for k, v in RUN_CONFIG.items() if k != "models"})),
            ["run", "nomodels.yaml"],
        )[1],
        r"nomodels\.yaml: models: required key is missing\.",
    ),
    Case(
        "config-duplicate-method",
        lambda ws, mp: ["run", write_config(ws, methods=["saliency", "saliency"])],
        r"config\.yaml: \(top level\): Value error, method name 'saliency' appears twice\.",
    ),
    Case(
        "config-target-not-an-output",
        lambda ws, mp: ["run", write_config(ws, out="out/run2", data={"path": "data", "target": 5})],
        r"data\.target: class 5 is not an output of model 'cnn' \(2 outputs\)\.",
    ),
    Case(
        "config-changed-for-existing-run",
        lambda ws, mp: ["run", write_config(ws, methods=["saliency", "sobel"])],
        r"The run folder out/run holds a run with a different configuration; use --force to recompute or choose another --out\.",
    ),
    Case(
        "bad-backend",
        lambda ws, mp: ["run", "config.yaml", "--backend", "spark"],
        r"--backend must be 'local' or 'ray', got 'spark'\.",
    ),
    # ---------------------------------------------------------------- outputs
    Case(
        "out-is-a-file",
        lambda ws, mp: [*EXPLAIN[:8], "out/scores.parquet", *EXPLAIN[9:]],
        r"The output path out/scores\.parquet is a file, not a folder\.",
    ),
    Case(
        "out-inside-a-file",
        lambda ws, mp: [*EXPLAIN[:8], "out/scores.parquet/maps", *EXPLAIN[9:]],
        r"The output folder out/scores\.parquet/maps cannot be created \(Not a directory\)\.",
    ),
    Case(
        "run-out-is-a-file",
        lambda ws, mp: ["run", write_config(ws, out="out/saliency.npz")],
        r"The output path out/saliency\.npz is a file, not a folder\.",
    ),
    Case(
        "out-read-only-explain",
        lambda ws, mp: (_read_only(mp, "out"), EXPLAIN)[1],
        r"The output folder out is not writable\.",
    ),
    Case(
        "out-read-only-evaluate",
        lambda ws, mp: (_read_only(mp, "out"), EVALUATE)[1],
        r"The output folder out is not writable\.",
    ),
    Case(
        "out-read-only-train",
        lambda ws, mp: (_read_only(mp, "out"), ["train", "--data", "data", "--out", "out/m.pt", "--epochs", "1"])[1],
        r"The output folder out is not writable\.",
    ),
    Case(
        "out-read-only-run",
        lambda ws, mp: (_read_only(mp, "out/run"), ["run", "config.yaml", "--no-report"])[1],
        r"The output folder out/run is not writable\.",
    ),
    Case(
        "out-read-only-benchmark",
        lambda ws, mp: (
            _read_only(mp, "out"),  # the benchmark is built beside out/bench, then renamed
            ["benchmark", "--out", "out/bench", "--n-train", "4", "--n-test", "2", "--size", "32"],
        )[1],
        r"The output folder out is not writable\.",
    ),
    Case(
        "evaluate-out-not-parquet",
        lambda ws, mp: [*EVALUATE[:-1], "out/scores.csv"],
        r"--out out/scores\.csv must end in \.parquet\.",
    ),
    Case(
        "train-out-is-sidecar",
        lambda ws, mp: ["train", "--data", "data", "--out", "out/m.json", "--epochs", "1"],
        r"--out out/m\.json must be the weights file \(e\.g\. model\.pt\); the \.json sidecar is written beside it\.",
    ),
    Case(
        "disk-full-evaluate",
        lambda ws, mp: (mp.setattr(pd.DataFrame, "to_parquet", _disk_full_after(100)), EVALUATE)[1],
        r"Writing out/scores\.parquet failed \(No space left on device\); earlier results are unchanged\.",
    ),
    Case(
        "disk-full-explain",
        lambda ws, mp: (mp.setattr(np, "savez_compressed", _disk_full_after(100)), EXPLAIN)[1],
        r"Writing out/saliency\.npz failed \(No space left on device\); earlier results are unchanged\.",
    ),
    Case(
        "disk-full-run-consolidate",
        lambda ws, mp: (
            mp.setattr(pd.DataFrame, "to_parquet", _disk_full_after(100)),
            ["run", "config.yaml", "--no-report"],
        )[1],
        r"Writing out/run/results\.parquet failed \(No space left on device\); earlier results are unchanged\.",
    ),
    # ---------------------------------------------------------------- train and benchmark
    Case(
        "train-one-class",
        lambda ws, mp: (
            shutil.rmtree(ws / "nomask" / "b"),
            ["train", "--data", "nomask", "--out", "out/m.pt", "--epochs", "1"],
        )[1],
        r"The training data nomask has 1 class; training needs at least 2\.",
    ),
    Case(
        "benchmark-unknown-background",
        lambda ws, mp: ["benchmark", "--out", "bench", "--background", "retna", "--n-train", "4", "--n-test", "2"],
        r"Unknown background 'retna'",
    ),
    Case(
        "benchmark-bad-lesions",
        lambda ws, mp: ["benchmark", "--out", "bench", "--lesions", "three", "--n-train", "4", "--n-test", "2"],
        r"--lesions must look like 1-3 or 2, got 'three'\.",
    ),
    Case(
        "benchmark-out-not-empty",
        lambda ws, mp: ["benchmark", "--out", "out", "--n-train", "4", "--n-test", "2", "--size", "32"],
        r"The output folder out is not empty and holds no benchmark; choose a new folder\.",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_its_exact_error_and_keeps_earlier_results(case, ws, monkeypatch, capsys):
    before = snapshot(ws / "out")
    with pytest.MonkeyPatch.context() as mp:  # os.access / writers back to normal before checking
        result = run_cli(capsys, *case.setup(ws, mp))
    assert_user_error(result, case.pattern)
    assert len(result.err.strip().splitlines()) <= 2, result.err  # one sentence (rich may wrap once)
    assert snapshot(ws / "out") == before, "earlier results changed or a file was left behind"
    assert temp_files(ws / "out") == []


def test_corpus_size():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_disk_full_while_committing_a_unit_keeps_committed_units_and_resume_completes(ws, monkeypatch, capsys):
    """ENOSPC on the 3rd unit of a fresh run: units 1-2 stay committed, no temp file, resume finishes the same."""
    write_config(ws, "fresh.yaml", out="fresh", unit_images=2)
    real = pd.DataFrame.to_parquet
    calls = {"n": 0}

    def flaky(self, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            return _disk_full_after(50)(self, path)
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    r = run_cli(capsys, "run", "fresh.yaml", "--no-report")
    assert_user_error(
        r,
        r"Writing fresh/units/cnn__saliency__\w+__0000004\.parquet failed \(No space left on device\); earlier results are unchanged\.",
    )
    committed = sorted(p.name for p in (ws / "fresh" / "units").iterdir())
    assert len(committed) == 2 and temp_files(ws / "fresh" / "units") == []
    kept = snapshot(ws / "fresh" / "units")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    r = run_cli(capsys, "run", "fresh.yaml", "--no-report")
    assert r.code == 0, r.err
    assert {k: v for k, v in snapshot(ws / "fresh" / "units").items() if k in kept} == kept
    write_config(ws, "whole.yaml", out="whole", unit_images=2)
    assert run_cli(capsys, "run", "whole.yaml", "--no-report").code == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(ws / "fresh" / "results.parquet"),
        pd.read_parquet(ws / "whole" / "results.parquet"),
        check_exact=True,
    )


def test_force_with_bad_data_keeps_the_earlier_run(ws, capsys):
    """``--force`` must not wipe a finished run when the new attempt fails before computing anything."""
    before = snapshot(ws / "out")
    (ws / "data" / "masks" / "a" / "0.png").unlink()
    r = run_cli(capsys, "run", "config.yaml", "--force", "--no-report")
    assert_user_error(r, r"The image data/a/0\.png has no mask in data/masks; every image needs one\.")
    assert snapshot(ws / "out") == before


def test_failed_first_attempt_does_not_block_the_corrected_config(ws, capsys):
    """A run that fails on its data (wrong path) can be rerun with the corrected config without --force."""
    write_config(ws, "typo.yaml", out="new", data={"path": "dta"})
    assert_user_error(run_cli(capsys, "run", "typo.yaml", "--no-report"), r"The data folder dta does not exist\.")
    write_config(ws, "typo.yaml", out="new")
    r = run_cli(capsys, "run", "typo.yaml", "--no-report")
    assert r.code == 0, r.err


def test_user_error_in_a_real_process_and_debug_traceback(ws):
    (ws / "bad.yaml").write_text("seed: [0\n")
    r = run_cli_subprocess("run", ws / "bad.yaml")
    assert_user_error(r, r"The config file \S*bad\.yaml is not valid YAML at line 2, column 1\.")
    r = run_cli_subprocess("--debug", "run", ws / "bad.yaml")
    assert r.code != 0 and "Traceback" in r.err and "ConfigError" in r.err


def test_debug_reraises_in_process(ws, capsys):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        run_cli(capsys, "--debug", "run", "nope.yaml")


@pytest.mark.parametrize(
    "command, stage",
    [
        (EVALUATE, "xaiscope.commands.evaluate_job.open_model_and_source"),
        (["train", "--data", "data", "--out", "out/m.pt", "--epochs", "1"], "xaiscope.commands.train_job.read_pair"),
    ],
)
def test_unwritable_output_fails_before_any_work(ws, monkeypatch, capsys, command, stage):
    def never(*a, **k):
        raise AssertionError("the work started although the output cannot be written")

    monkeypatch.setattr(stage, never)
    _read_only(monkeypatch, "out")
    assert_user_error(run_cli(capsys, *command), r"The output folder out is not writable\.")


def test_disk_full_while_writing_attributions_keeps_committed_units(ws, monkeypatch, capsys):
    """ENOSPC inside the Zarr chunk write of the 2nd unit: one clear sentence, unit 1 kept, resume completes."""
    import zarr

    write_config(ws, "fresh.yaml", out="fresh", unit_images=2)
    real = zarr.Array.__setitem__
    calls = {"n": 0}

    def flaky(self, key, value):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", flaky)
    r = run_cli(capsys, "run", "fresh.yaml", "--no-report")
    assert_user_error(
        r,
        r"Writing attributions to fresh/attributions\.zarr failed \(No space left on device\); finished units are kept\.",
    )
    assert len(list((ws / "fresh" / "units").glob("*.parquet"))) == 1
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    r = run_cli(capsys, "run", "fresh.yaml", "--no-report")
    assert r.code == 0, r.err
    assert "(1 already done)" in " ".join(r.out.split())
    assert len(pd.read_parquet(ws / "fresh" / "results.parquet")) == 6 * 2


def test_max_image_pixels_raises_the_limit_for_a_genuinely_large_image(ws, capsys):
    """A 1200 x 1000 image is refused under a 1,000,000-pixel limit, read under 1,200,000;
    the limit holds for that command only."""
    from xaiscope.data import readers

    for c in ("a", "b"):
        write_1bit_png(ws / "large" / c / "0.png", 1200, 1000)
    args = [*EXPLAIN[:4], "large", *EXPLAIN[5:8], "out/large", "--overlays", "0"]
    r = run_cli(capsys, *args, "--max-image-pixels", "1000000")
    assert_user_error(
        r,
        r"The image large/a/0\.png has 1,200,000 pixels, more than the limit of 1,000,000 that guards against "
        r"decompression bombs; pass --max-image-pixels 1200000 \(or more\) if you trust it\.",
    )
    assert not (ws / "out" / "large").exists()
    r = run_cli(capsys, *args, "--max-image-pixels", "1200000")
    assert r.code == 0, r.err
    assert np.load(ws / "out" / "large" / "saliency.npz")["attributions"].shape == (2, 1, 1000, 1200)
    assert readers._MAX_PIXELS.get() == readers.DEFAULT_MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default


def test_tiff_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    from xaiscope.data import max_image_pixels, read_image
    from xaiscope.errors import DataError

    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((30, 40, 3), np.uint8))
    assert read_image(tmp_path / "rgb.tif", max_pixels=1200).shape == (3, 30, 40)
    with max_image_pixels(1199), pytest.raises(DataError, match=r"has 1,200 pixels, more than the limit of 1,199"):
        read_image(tmp_path / "rgb.tif")

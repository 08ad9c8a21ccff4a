"""Killed and interrupted ``xaiscope run``: resuming gives exactly the uninterrupted results.

The SIGKILL test starts ``xaiscope run`` in a real child process (forked from a fork
server that imported xaiscope once, see ``reliability_helpers``), kills it with SIGKILL at
10 seeded points, restarts it each time, and compares the final tables and the Zarr
store with an uninterrupted run of the same config made the same way; once with a
model factory that seeds itself and once with a random-weight zoo spec, whose weights
each restart draws again under the run's seed. A kill point is
"after K committed work units (K = 24: while consolidating), plus a delay of D seconds
(0-30 ms, about one unit)" with K and D drawn from a seeded RNG; progress-based points
land in the same phases on a fast or a loaded machine (a kill may hit a unit's compute,
its Zarr chunk write, its Parquet commit, the consolidation or the start-up).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from reliability_helpers import make_npz, start_forked, temp_files
from xaiscope.run.store import RunStore

METHODS = ["saliency", "input_x_gradient", "gradcam", "sobel", "random", "input"]
N_IMAGES, UNIT_IMAGES = 12, 3
N_UNITS = len(METHODS) * N_IMAGES // UNIT_IMAGES  # 24
METRICS = ["sparseness", "relevance_mass_accuracy", "pointing_game", {"name": "deletion", "hparams": {"steps": 4}}]


def _config(tmp: Path, data: Path, out: Path, spec: str = "fixture_models:seeded_cnn") -> Path:
    cfg = {
        "out": str(out),
        "seed": 0,
        "batch_size": 16,
        "unit_images": UNIT_IMAGES,
        "data": {"path": str(data)},
        "models": [{"name": "cnn", "spec": spec}],
        "methods": METHODS,
        "metrics": METRICS,
        "analyses": {"ranking": None, "sensitivity": None},
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _units(out: Path) -> int:
    d = out / "units"
    return sum(1 for p in d.glob("*.parquet") if not p.name.endswith(".curves.parquet")) if d.exists() else 0


def _wait(proc, timeout: float = 240) -> int:
    proc.join(timeout)
    assert proc.exitcode is not None, "xaiscope run did not finish"
    return proc.exitcode


def _check_store(out: Path, reference: Path) -> None:
    """Tables identical to the reference, one row per (image, method, metric), valid Zarr."""
    got, ref = pd.read_parquet(out / "results.parquet"), pd.read_parquet(reference / "results.parquet")
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    key = ["image_id", "model", "method", "setting", "metric"]
    assert not got.duplicated(key).any()
    assert len(got) == N_IMAGES * len(METHODS) * len(METRICS)
    assert set(got["image_id"]) == {f"img{i:02d}" for i in range(N_IMAGES)}
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "curves.parquet"), pd.read_parquet(reference / "curves.parquet"), check_exact=True
    )
    units = [p for p in (out / "units").glob("*.parquet") if not p.name.endswith(".curves.parquet")]
    assert len(units) == N_UNITS
    for p in units:  # every committed unit file is complete
        assert len(pd.read_parquet(p)) == UNIT_IMAGES * len(METRICS)
    import zarr

    store, ref_store = RunStore(out), RunStore(reference)
    group = zarr.open_group(str(out / "attributions.zarr"), mode="r")
    n_arrays = 0
    for method in METHODS:
        a = store.attributions("cnn", method, "default")
        assert a.shape == (N_IMAGES, 1, 16, 16)
        assert np.isfinite(a.reshape(N_IMAGES, -1)).all(axis=1).all(), method  # no NaN row: every unit finished
        np.testing.assert_array_equal(a, ref_store.attributions("cnn", method, "default"))
        n_arrays += 1
    assert n_arrays == len(METHODS) and len(list(group["cnn"].group_keys())) == len(METHODS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupt")
    data = make_npz(tmp / "d.npz", n=N_IMAGES)
    ref = tmp / "reference"
    p = start_forked(["run", _config(tmp, data, ref), "--no-report"], tmp / "reference.log")
    assert _wait(p) == 0, (tmp / "reference.log").read_text()
    return tmp, data, ref


def test_sigkill_at_ten_seeded_points_then_resume_gives_identical_results(setup):
    tmp, data, ref = setup
    _kill_and_resume(tmp, ref, tmp / "killed", _config(tmp, data, tmp / "killed"), n_points=10, seed=20240610)


@pytest.fixture(scope="module")
def random_weights_reference(setup):
    """An uninterrupted run of the same grid with a random-weight zoo spec (``small_cnn``)."""
    tmp, data, _ = setup
    ref = tmp / "reference_small_cnn"
    p = start_forked(["run", _config(tmp, data, ref, "small_cnn"), "--no-report"], tmp / "reference_small_cnn.log")
    assert _wait(p) == 0, (tmp / "reference_small_cnn.log").read_text()
    return ref


def test_sigkill_then_resume_with_a_random_weight_spec_gives_identical_results(setup, random_weights_reference):
    """Every restart draws the model again: seeded, it is the same model, so the resumed units
    fit the ones committed before the kill, and the whole equals the uninterrupted run."""
    tmp, data, _ = setup
    out = tmp / "killed_small_cnn"
    cfg = _config(tmp, data, out, "small_cnn")
    _kill_and_resume(tmp, random_weights_reference, out, cfg, n_points=6, seed=20240611)
    manifest = RunStore(out).read_manifest()
    assert manifest["models"] == RunStore(random_weights_reference).read_manifest()["models"]
    assert manifest["models"]["cnn"]["init_seed"] is not None


def _kill_and_resume(tmp: Path, ref: Path, out: Path, cfg: Path, *, n_points: int, seed: int) -> None:
    """Start, SIGKILL and restart ``xaiscope run`` at ``n_points`` seeded points, finish it, compare with ``ref``."""
    rng = random.Random(seed)
    # kill points: after K committed units (K = 0 .. N_UNITS; N_UNITS = while consolidating) plus a small delay
    points = sorted(rng.sample(range(0, N_UNITS + 1), n_points))
    points = [(k, rng.uniform(0.0, 0.03)) for k in points]  # a unit takes ~10-50 ms: lands within the next unit or two
    killed, seen = 0, []
    for i, (k, delay) in enumerate(points):
        log = tmp / f"{out.name}_kill{i}.log"
        proc = start_forked(["run", cfg, "--no-report"], log)
        deadline = time.time() + 240
        while proc.is_alive() and _units(out) < k and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        code = _wait(proc)
        assert code in (0, -signal.SIGKILL), log.read_text()
        killed += code == -signal.SIGKILL
        seen.append(_units(out))
        # whatever was committed so far is readable and complete
        for p in (out / "units").glob("*.parquet") if (out / "units").exists() else []:
            rows = UNIT_IMAGES * (
                5 if p.name.endswith(".curves.parquet") else len(METRICS)
            )  # deletion: 4 steps + start
            assert len(pd.read_parquet(p)) == rows, p
    print("kill points", points, "killed", killed, "units after each kill", seen)
    assert killed >= n_points - 2, (killed, seen)  # almost every point must really interrupt the run
    assert seen == sorted(seen)  # committed work is never lost
    final = tmp / f"{out.name}_final.log"
    proc = start_forked(["run", cfg, "--no-report"], final)
    assert _wait(proc) == 0, final.read_text()
    assert "already done" in final.read_text()
    _check_store(out, ref)
    # a leftover temporary file of a killed writer is never taken for a result
    assert all(Path(t).name.startswith(".") or t.endswith(".partial") for t in temp_files(out))


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_resume_completes(setup, tmp_path):
    _, data, ref = setup
    out = tmp_path / "interrupted"
    cfg = _config(tmp_path, data, out)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "xaiscope.cli", "run", str(cfg), "--no-report"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while proc.poll() is None and _units(out) < 2 and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()  # still running: the interrupt lands mid-run
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert "Interrupted. Finished work is kept; run the same command again to resume." in " ".join(stderr.split())
    done = _units(out)
    assert 2 <= done < N_UNITS
    p = start_forked(["run", cfg, "--no-report"], tmp_path / "resume.log")
    assert _wait(p) == 0, (tmp_path / "resume.log").read_text()
    assert f"({done} already done)" in (tmp_path / "resume.log").read_text()
    _check_store(out, ref)

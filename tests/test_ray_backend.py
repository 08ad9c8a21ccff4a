"""The Ray backend gives the same results as the local one and survives a killed worker."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaiscope.commands.run_job import run
from xaiscope.run.config import parse_config

ray = pytest.importorskip("ray", reason="the ray extra is part of the test install")
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray") / "crash-marker"
    os.environ["XAISCOPE_DRIVER_PID"] = str(os.getpid())
    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "XAISCOPE_DRIVER_PID": str(os.getpid()),
        "XAISCOPE_CRASH_MARKER": str(marker),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


def _config(tmp_path, model: str, out: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((10, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((10, 16, 16), bool)
    masks[:, 4:10, 4:10] = True
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 2, masks=masks)
    return {
        "out": str(tmp_path / out),
        "seed": 3,
        "unit_images": 3,
        "batch_size": 16,
        "data": {"path": str(tmp_path / "d.npz")},
        "models": [{"name": "m", "spec": model}],
        "methods": ["saliency", {"name": "smoothgrad", "hparams": {"n_samples": 3}}, "random"],
        "metrics": ["relevance_mass_accuracy", {"name": "deletion", "hparams": {"steps": 4}}, "sparseness"],
        "analyses": {"ranking": {"draws": 100}},
    }


def _results(root) -> pd.DataFrame:
    return pd.read_parquet(Path(root) / "results.parquet")


def test_ray_and_local_backends_give_identical_results(tmp_path, ray_cluster):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray tasks use one thread; the same arithmetic order locally
    try:
        local = run(parse_config(_config(tmp_path, "fixture_models:seeded_cnn", "local")))
        remote = run(parse_config(_config(tmp_path, "fixture_models:seeded_cnn", "ray")), backend="ray")
    finally:
        torch.set_num_threads(threads)
    a, b = _results(local), _results(remote)
    assert len(a) == 10 * 3 * 3
    pd.testing.assert_frame_equal(a, b)


def test_killed_worker_is_retried_and_nothing_is_missing_or_duplicated(tmp_path, ray_cluster):
    marker = ray_cluster
    marker.unlink(missing_ok=True)
    root = run(parse_config(_config(tmp_path, "fixture_models:crash_once", "crash")), backend="ray")
    assert marker.exists(), "a worker was killed during the run"
    df = _results(root)
    keys = ["image_id", "model", "method", "setting", "metric"]
    assert not df.duplicated(keys).any()
    assert len(df) == 10 * 3 * 3
    assert len(list((Path(root) / "units").glob("*[0-9].parquet"))) == 3 * 4


def test_missing_ray_address_is_a_clear_error(tmp_path, monkeypatch):
    from xaiscope.errors import ConfigError
    from xaiscope.run import ray_backend

    monkeypatch.setattr(
        ray_backend,
        "_import_ray",
        lambda: (_ for _ in ()).throw(
            ConfigError("The ray backend needs Ray; install it with: pip install 'xaiscope[ray]'.")
        ),
    )
    with pytest.raises(ConfigError, match="pip install 'xaiscope\\[ray\\]'"):
        run(parse_config(_config(tmp_path, "fixture_models:seeded_cnn", "x")), backend="ray")


def test_backend_can_be_set_in_the_config_file(tmp_path):
    cfg = _config(tmp_path, "fixture_models:seeded_cnn", "y")
    cfg["backend"] = "ray"
    assert parse_config(cfg).backend == "ray"
    cfg["backend"] = "spark"
    from xaiscope.errors import ConfigError

    with pytest.raises(ConfigError, match="backend: Input should be 'local' or 'ray'"):
        parse_config(cfg)


def test_ray_puts_each_image_range_once_and_holds_few_at_a_time(tmp_path, ray_cluster, monkeypatch):
    import torch

    from xaiscope.run import ray_backend as rb

    opened = []
    real = rb._range_inputs

    def spy(ctx, unit):
        opened.append((unit.start, unit.stop))
        return real(ctx, unit)

    monkeypatch.setattr(rb, "_range_inputs", spy)
    monkeypatch.setitem(rb.ray_backend.__kwdefaults__, "ranges_in_flight", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run(parse_config(_config(tmp_path, "fixture_models:seeded_cnn", "local")))
        remote = run(parse_config(_config(tmp_path, "fixture_models:seeded_cnn", "ray")), backend="ray")
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(_results(local), _results(remote))
    assert len(opened) == len(set(opened)) > 1  # one put per range, shared by every model and method

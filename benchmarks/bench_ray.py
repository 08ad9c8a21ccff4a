"""Ray backend speed-up: the same grid on one worker and on two workers (one thread each).

    python benchmarks/bench_ray.py [--images 192] [--unit-images 8]

Prints, for 1 and 2 workers, the wall time of the work-unit phase (from the run's
manifest: units computed on Ray and committed by the driver) and of the whole run
(plus data loading, consolidation and analyses, which stay on the driver), and the
speed-ups (target >= 1.6x on 2 cores). Each configuration runs in a fresh run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _warm_up() -> int:
    """Import what a work unit needs, so worker start-up is not timed (a long-lived cluster pays it once)."""
    import time

    import xaiscope.run.units  # noqa: F401

    time.sleep(1.0)  # keep this worker busy so the next warm-up task starts another one
    return os.getpid()


def main() -> None:
    import ray
    import torch

    from xaiscope.commands.run_job import run
    from xaiscope.run.config import parse_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--unit-images", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 1, 32, 32)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=np.arange(args.images) % 2)
    cfg = {
        "data": {"path": str(tmp / "d.npz")},
        "unit_images": args.unit_images,
        "batch_size": 64,
        "models": [{"name": "cnn", "spec": "small_cnn"}],
        "methods": [
            {"name": "integrated_gradients", "hparams": {"n_steps": 32}},
            {"name": "smoothgrad", "hparams": {"n_samples": 16}},
        ],
        "metrics": [{"name": "deletion", "hparams": {"steps": 16}}],
        "analyses": {"ranking": None, "sensitivity": None},
    }
    torch.set_num_threads(1)
    warm = ray.remote(num_cpus=1)(_warm_up)
    times, units = {}, {}
    for workers in (1, 2):
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
        ray.get([warm.remote() for _ in range(workers)])  # start every worker and import xaiscope there
        t = time.perf_counter()
        root = run(parse_config({**cfg, "out": str(tmp / f"run{workers}")}), backend="ray", force=True)
        times[workers] = time.perf_counter() - t
        ray.shutdown()
        units[workers] = json.loads((root / "manifest.json").read_text())["timings_s"]["units_s"]
        print(f"{workers} worker(s): work units {units[workers]:.1f} s, whole run {times[workers]:.1f} s  ({root})")
    print(
        f"speed-up with 2 workers: work units {units[1] / units[2]:.2f}x, whole run {times[1] / times[2]:.2f}x (target >= 1.6x)"
    )


if __name__ == "__main__":
    main()

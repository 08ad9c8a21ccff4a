"""Ray backend speed-up: the same grid on one worker and on two workers (one thread each).

    python benchmarks/bench_ray.py [--images 96] [--unit-images 8]

Prints the wall time of the unit phase for 1 and 2 workers and the speed-up (target
>= 1.6x on 2 cores). Each configuration runs in a fresh run folder with ``--force``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    import ray
    import torch

    from xaiscope.pipeline.config import parse_config
    from xaiscope.pipeline.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--unit-images", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 1, 32, 32)).astype(np.float32)
    np.savez(tmp / "d.npz", x=x, y=np.arange(args.images) % 2)
    cfg = {
        "data": {"path": str(tmp / "d.npz")}, "unit_images": args.unit_images, "batch_size": 64,
        "models": [{"name": "cnn", "spec": "small_cnn"}],
        "methods": [{"name": "integrated_gradients", "hparams": {"n_steps": 32}}, {"name": "smoothgrad", "hparams": {"n_samples": 16}}],
        "metrics": [{"name": "deletion", "hparams": {"steps": 16}}],
        "analyses": {"ranking": None, "sensitivity": None},
    }
    torch.set_num_threads(1)
    times = {}
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        ray.get([ray.remote(lambda: 0).remote() for _ in range(workers)])  # warm the workers
        t = time.perf_counter()
        root = run(parse_config({**cfg, "out": str(tmp / f"run{workers}")}), backend="ray", force=True)
        times[workers] = time.perf_counter() - t
        ray.shutdown()
        print(f"{workers} worker(s): {times[workers]:.1f} s  ({root})")
    print(f"speed-up with 2 workers: {times[1] / times[2]:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()

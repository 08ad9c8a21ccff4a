"""Memory and throughput of ``xaiscope evaluate`` as the dataset grows (streaming sources).

Writes N small and N large images of 3 x S x S (default 1,000 and 8,000 of 3x128x128; random
8-bit pixels with a bright square, two classes, masks) to an image folder and to a Zarr store
(``xaiscope convert``) under a temporary folder, then runs ``xaiscope evaluate`` with
``small_cnn`` (saliency, gradcam; sparseness, deletion with 10 steps) on each in a child
process, and prints per run the peak RSS of that child (``ru_maxrss`` of the children), the
images per second, and the ratios large / small. The reference row ("in memory") scores the
small set from one in-memory tensor (the path every job took before sources existed), in a
child process too, so the streaming throughput is read against it.

Targets: peak RSS at the large size within 1.2x of the small one; streaming throughput on the
small set within 10% of the in-memory path. Wall-clock numbers depend on what else the machine
runs: the load average is printed with them.

    python benchmarks/bench_scale.py [--sizes 1000,8000] [--size 128] [--workers 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS, METRICS = "saliency,gradcam", "sparseness,deletion"
CHILD_EVALUATE = """
import sys, time
from pathlib import Path
import zarr  # imported before the clock starts in both modes (the in-memory read needs it too)
from xaiscope.api import evaluate_images
data, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "memory":
    from xaiscope import data as xdata
    data = xdata.load(data)
t = time.perf_counter()
df = evaluate_images("small_cnn", data, methods=["saliency", "gradcam"], metrics=["sparseness", "deletion"],
                     params={"deletion": {"steps": 10}}, workers=int(sys.argv[4]), out=out)
import resource
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"SECONDS {time.perf_counter() - t:.3f} ROWS {len(df)} RSS {rss}")
"""


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average n/a"


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` PNG images (and masks) of 3 x size x size in two classes under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        (root / "masks" / c).mkdir(parents=True, exist_ok=True)
    s = size // 4
    for i in range(n):
        c = "ab"[i % 2]
        img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        r, q = rng.integers(0, size - s, 2)
        img[r : r + s, q : q + s] = 230 if c == "a" else 160
        mask = np.zeros((size, size), np.uint8)
        mask[r : r + s, q : q + s] = 255
        Image.fromarray(img).save(root / c / f"{i:05d}.png", compress_level=1)
        Image.fromarray(mask).save(root / "masks" / c / f"{i:05d}.png", compress_level=1)
    return root


def run_child(data: Path, mode: str, out: Path, workers: int) -> tuple[float, float, int]:
    """``(seconds, peak RSS in MiB, rows)`` of one evaluation in a fresh child process (its
    own ``ru_maxrss``, read by the child at its end; decoding workers are not included)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    r = subprocess.run(
        [sys.executable, "-c", CHILD_EVALUATE, str(data), mode, str(out), str(workers)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(f"the child process failed:\n{r.stderr[-3000:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("SECONDS"))
    _, secs, _, rows, _, rss = line.split()
    return float(secs), int(rss) / 1024, int(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,8000")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", default=None, help="folder to keep the generated data in (default: a temporary one)")
    args = ap.parse_args()
    small, large = (int(v) for v in args.sizes.split(","))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="xaiscope-scale-"))
    try:
        print(
            f"bench_scale: images of 3x{args.size}x{args.size}, small_cnn, {METHODS}; {METRICS} (10 steps); {_load()}"
        )
        sets = {}
        for n in (small, large):
            t = time.perf_counter()
            folder = write_folder(root / f"folder{n}", n, args.size)
            zarr_path = root / f"data{n}.zarr"
            subprocess.run(
                [str(Path(sys.executable).parent / "xaiscope"), "convert", str(folder), str(zarr_path)],
                check=True,
                capture_output=True,
            )
            sets[n] = (folder, zarr_path)
            print(f"  wrote {n} images to a folder and a Zarr store in {time.perf_counter() - t:.0f} s")
        rows = []
        # the in-memory reference first (smallest peak), then small before large for each kind
        secs, rss, _ = run_child(sets[small][1], "memory", root / "out-mem", 0)
        rows.append(("in memory (Zarr read whole)", small, secs, rss))
        for kind, k in (("Zarr, streamed", 1), ("folder, streamed", 0)):
            for n in (small, large):
                secs, rss, _ = run_child(sets[n][k], "stream", root / f"out-{kind[:4]}-{n}", args.workers)
                rows.append((kind, n, secs, rss))
        print(f"{'source':<28} {'images':>7} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13}")
        for kind, n, secs, rss in rows:
            print(f"{kind:<28} {n:>7} {secs:8.1f} {n / secs:9.1f} {rss:13.0f}")
        ref = rows[0][1] / rows[0][2]
        for kind in ("Zarr, streamed", "folder, streamed"):
            (_, n1, s1, r1), (_, n2, s2, r2) = [r for r in rows if r[0] == kind]
            print(
                f"{kind}: peak RSS {large} / {small} = {r2 / r1:.2f} (target <= 1.2); "
                f"throughput at {small} vs in memory = {n1 / s1 / ref:.2f} (target >= 0.9); "
                f"throughput {large} / {small} = {(n2 / s2) / (n1 / s1):.2f}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

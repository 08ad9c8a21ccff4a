"""What the fingerprints of a run cost: image hashes while reading, weights hashes, unit records.

On the default benchmark (2,000 training + 500 test images of 64x64, written to a
temporary folder) it prints the time to read each split with ``load_folder`` and the
part of it spent hashing the decoded images (one BLAKE2b pass over each image's
float32 pixels); the time of :func:`xaiscope.models.weights_hash` (one pass over the
state dict) for ``small_cnn``, ``small_resnet`` and ``torchvision:resnet18``; and the
time to build the input records of a run's work units (32 images per unit). Wall-clock
numbers depend on what else the machine runs: the load average is printed with them.

    python benchmarks/bench_fingerprints.py [--n-train 2000] [--n-test 500] [--size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average n/a"


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from xaiscope import models
    from xaiscope.data import load_folder
    from xaiscope.data.benchmark import generate
    from xaiscope.data.hashing import array_hash
    from xaiscope.run import fingerprints

    print(_load())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench"
        generate(root, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=0)
        print(f"{'split':<6} {'images':>7} {'read s':>8} {'hash s':>8} {'hash %':>7}")
        for split in ("train", "test"):
            ds = load_folder(root / split, normalise="dataset")
            read = _best(lambda split=split: load_folder(root / split, normalise="dataset"), 2)
            x = ds.x.numpy()
            hashing = _best(lambda x=x: [array_hash(x[i]) for i in range(len(x))])
            print(f"{split:<6} {len(ds):>7} {read:>8.3f} {hashing:>8.4f} {100 * hashing / read:>6.1f}%")
        test = load_folder(root / "test", normalise="dataset")
        entries = fingerprints.image_entries(test)
        norm = fingerprints.normalisation_of(test)
        t = _best(
            lambda: [
                fingerprints.unit_record("0" * 32, "1" * 32, norm, entries[s : s + 32])
                for s in range(0, len(entries), 32)
            ]
        )
        masks = _best(lambda: test.mask_hashes())
        print(
            f"records of {len(range(0, len(entries), 32))} units of 32 test images: {t * 1e3:.2f} ms; mask hashes {masks * 1e3:.1f} ms"
        )
    print(f"{'model':<22} {'parameters':>11} {'MB':>7} {'weights hash s':>15}")
    for spec in ("small_cnn", "small_resnet", "torchvision:resnet18"):
        net = models.load(spec, num_classes=2, in_channels=1)
        n = sum(v.numel() for v in net.state_dict().values())
        mb = sum(v.numel() * v.element_size() for v in net.state_dict().values()) / 2**20
        print(f"{spec:<22} {n:>11,} {mb:>7.1f} {_best(lambda net=net: models.weights_hash(net)):>15.4f}")


if __name__ == "__main__":
    main()

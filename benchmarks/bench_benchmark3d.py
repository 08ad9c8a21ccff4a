"""Speed of the 3D lesion benchmark generator, and (optionally) of training ``small_cnn3d`` on it.

Prints the time to prepare the MNI152 background (importing nilearn included), to draw the
arrays of N volumes (numpy only) and to write the NIfTI folder, and volumes per second.
With ``--train`` it also trains ``small_cnn3d`` with :func:`xaiscope.models.train.train`
(what ``xaiscope train`` calls; class-balanced batches, the default for volumes) on a
benchmark of ``--train-size`` and prints time and test accuracy. Wall-clock numbers depend
on what else the machine runs: the load average is printed with them. On a shared machine
one torch thread (``--threads 1``) is often faster than two.

    python benchmarks/bench_benchmark3d.py [--n 600] [--size 48,56,48] [--train] [--train-size 32,40,32]
        [--epochs 12] [--seed 0] [--threads 1] [--no-generation]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average n/a"


def bench_generation(n: int, size: str) -> None:
    from xaiscope.data.benchmark import VolumeParams, generate_3d
    from xaiscope.data.benchmark.volumes import make_split, template

    p = VolumeParams.from_kwargs(n_train=n, size=size)
    print(
        f"generation of {n} volumes of {'x'.join(map(str, p.size))} (train {n * 3 // 4} + test {n - n * 3 // 4}); {_load()}"
    )
    t0 = time.perf_counter()
    template(p.size, p.tissue)
    t1 = time.perf_counter()
    make_split(p, "train")
    t2 = time.perf_counter()
    out = Path(tempfile.mkdtemp()) / "bm"
    generate_3d(out, n_train=n * 3 // 4, n_test=n - n * 3 // 4, size=size)
    t3 = time.perf_counter()
    megabytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    shutil.rmtree(out.parent)
    print(f"  background {t1 - t0:.2f} s (once per process), arrays {t2 - t1:.2f} s, arrays + files {t3 - t2:.2f} s")
    print(f"  {n / (t2 - t1):.0f} volumes/s in memory, {n / (t3 - t2):.0f} volumes/s to files ({megabytes:.0f} MiB)")


def bench_training(n_train: int, n_test: int, size: str, epochs: int, lr: float, width: int, seed: int) -> None:
    from xaiscope.data import normalise_dataset
    from xaiscope.data.benchmark import make_dataset_3d
    from xaiscope.models.train import init_model, train

    t0 = time.perf_counter()
    train_ds, test_ds = make_dataset_3d(n_train=n_train, n_test=n_test, size=size, seed=seed)
    print(f"generated {n_train} + {n_test} volumes of {size} (seed {seed}) in {time.perf_counter() - t0:.1f} s")
    normalise_dataset(train_ds, "dataset")
    normalise_dataset(test_ds, (train_ds.mean, train_ds.std))
    model = init_model("small_cnn3d", seed=seed, in_channels=1, num_classes=2, width=width)
    print(
        f"training small_cnn3d (width {width}): {epochs} epochs, lr {lr}, batch 16, cosine, "
        f"{torch.get_num_threads()} threads; {_load()}"
    )
    res = train(
        model, train_ds, test=test_ds, epochs=epochs, lr=lr, batch_size=16, schedule="cosine", seed=seed, progress=False
    )
    print(f"  {res.seconds:.1f} s, train accuracy {res.train_acc:.4f}, test accuracy {res.test_acc:.4f}; {_load()}")
    print("  test accuracy per epoch: " + " ".join(f"{h['test_acc']:.3f}" for h in res.history))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", default="48,56,48")
    ap.add_argument("--train", action="store_true", help="also time training small_cnn3d")
    ap.add_argument("--train-size", default="32,40,32")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the training data, initial weights and batches")
    ap.add_argument("--no-generation", action="store_true", help="skip the generation timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_generation:
        bench_generation(args.n, args.size)
    if args.train:
        bench_training(args.n_train, args.n_test, args.train_size, args.epochs, args.lr, args.width, args.seed)


if __name__ == "__main__":
    main()

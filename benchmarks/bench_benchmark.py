"""Speed of the ground-truth benchmark generator, and (optionally) of training on it.

Prints, per background: time to prepare the source, to draw the arrays of N images
(numpy only) and to write the folder (PNG encoding + files), and images per second.
With ``--train`` it also trains ``small_cnn`` on the default benchmark (2,000 / 500
images, 64x64, 15 epochs) and prints time and test accuracy. Wall-clock numbers depend
on what else the machine runs: the load average is printed with them.

    python benchmarks/bench_benchmark.py [--n 2500] [--size 64] [--backgrounds retina,noise] [--train] [--threads 2]
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


def bench_generation(n: int, size: int, backgrounds: list[str]) -> None:
    from xaiscope.data.benchmark import BenchmarkParams, generate, make_split
    from xaiscope.data.benchmark.backgrounds import _builtin, load_source

    print(f"generation of {n} images of {size}x{size} (train {n * 4 // 5} + test {n - n * 4 // 5}); {_load()}")
    print(f"{'background':<10} {'source s':>9} {'arrays s':>9} {'files s':>9} {'total s':>9} {'images/s':>9}")
    for bg in backgrounds:
        _builtin.cache_clear()
        t0 = time.perf_counter()
        load_source(bg, size)
        t1 = time.perf_counter()
        p = BenchmarkParams.from_kwargs(n_train=n, size=size, background=bg)
        make_split(p, "train")
        t2 = time.perf_counter()
        out = Path(tempfile.mkdtemp()) / "bm"
        _builtin.cache_clear()
        t3 = time.perf_counter()
        generate(out, n_train=n * 4 // 5, n_test=n - n * 4 // 5, size=size, background=bg)
        t4 = time.perf_counter()
        shutil.rmtree(out.parent)
        arrays, total = t2 - t1, t4 - t3
        print(f"{bg:<10} {t1 - t0:9.2f} {arrays:9.2f} {total - (t1 - t0) - arrays:9.2f} {total:9.2f} {n / total:9.0f}")


def bench_training(epochs: int) -> None:
    from xaiscope.data import normalise_dataset
    from xaiscope.data.benchmark import make_dataset
    from xaiscope.models.train import init_model, train

    train_ds, test_ds = make_dataset()
    normalise_dataset(train_ds, "dataset")
    normalise_dataset(test_ds, (train_ds.mean, train_ds.std))
    model = init_model("small_cnn", seed=0, in_channels=1, num_classes=2)
    print(
        f"training small_cnn on the default benchmark ('xaiscope train' defaults: {epochs} epochs, lr 3e-3, batch 32, "
        f"cosine), {torch.get_num_threads()} threads; {_load()}"
    )
    res = train(model, train_ds, test=test_ds, epochs=epochs, lr=3e-3, batch_size=32, schedule="cosine", progress=False)
    print(f"  {res.seconds:.1f} s, train accuracy {res.train_acc:.4f}, test accuracy {res.test_acc:.4f}; {_load()}")
    print("  test accuracy per epoch: " + " ".join(f"{h['test_acc']:.3f}" for h in res.history))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backgrounds", default="retina,cell,ihc,mri,noise")
    ap.add_argument("--train", action="store_true", help="also time training small_cnn on the default benchmark")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_generation(args.n, args.size, [b for b in args.backgrounds.split(",") if b])
    if args.train:
        bench_training(args.epochs)


if __name__ == "__main__":
    main()

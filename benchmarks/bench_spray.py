"""Spectral relevance analysis (SpRAy) on a planted shortcut, at the benchmark's default size.

Recipe:

1. The lesion benchmark (default settings: 2,000 training and 500 test images of 64x64,
   retina background, shape rule) with ``--rate`` (default 0.5) of the class-1 images
   carrying the corner marker; the same images without any marker come from the same
   seed with a vanishing marker rate (the generator draws everything else identically).
2. ``small_cnn`` trained on the marked images with the ``xaiscope train`` recipe (images
   normalised by the training set's mean and SD, Adam, ``--epochs`` 15, lr 3e-3, batch 32,
   cosine schedule, seed 0): the "confounded" model. A second one trained the same way on
   the unmarked images: the "clean" model. Test images are normalised with the model's
   training statistics.
3. Test accuracy of each model on three versions of the test images: as generated
   (markers on class 1), without markers, and with the marker moved to class 0 (painted
   on every class-0 image at a random place in the corner zone, none on class 1), overall
   and per class. The drop from "as generated" to "moved" measures how much the model
   relies on the marker; the clean model's drop on marked class-0 images shows how much of
   it comes from the marker merely looking like a lesion to a model that never saw it.
4. SpRAy (``lrp_epsilon_plus_flat``, default neighbours and eigengap rule, each grid of
   ``--grids``, default 32) on the class-1 test images as generated, for each model:
   ``k``, the cluster holding most marked images, its purity (share of its members that
   are marked) and recall (share of the marked images it holds), the flagged clusters,
   the purity and recall of all flagged clusters together, and the time.

    python benchmarks/bench_spray.py [--n-train 2000] [--n-test 500] [--epochs 15] [--rate 0.5] [--grids 32,16] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _moved(ds, rng: np.random.Generator):
    """A copy of unmarked ``ds`` with the marker painted on every class-0 image, none on class 1."""
    from xaiscope.data.benchmark.generate import CONFOUNDER_VALUE, confounder_box

    size = ds.x.shape[-1]
    side, zone = confounder_box(size)
    x = ds.x.clone()
    value = round(CONFOUNDER_VALUE * 255) / 255.0
    for i in (ds.y == 0).nonzero().flatten().tolist():
        oy, ox = rng.integers(1, zone - side + 2, size=2)
        x[i, :, oy : oy + side, ox : ox + side] = value
    out = ds.subset(range(len(ds)))
    out.x = x
    return out


def s_marked_share(ds) -> float:
    """Share of the class-1 images of ``ds`` that carry the marker."""
    ones = ds.y == 1
    return float(ds.extra_masks["confounder"][ones].flatten(1).any(1).float().mean())


def _normalised(ds, stats):
    from xaiscope.data import normalise_dataset

    return normalise_dataset(ds.subset(range(len(ds))), stats)


def _spray(net, ds, label: int, grid: int):
    from xaiscope import explain
    from xaiscope.analyses.spray import spray

    idx = (ds.y == label).nonzero().flatten()
    marked = ds.extra_masks["confounder"][idx].flatten(1).any(1).numpy()
    t0 = time.perf_counter()
    a = explain.get("lrp_epsilon_plus_flat", batch_size=128)(net, ds.x[idx], ds.y[idx])
    t1 = time.perf_counter()
    masks = {"mask": ds.masks[idx], "confounder": ds.extra_masks["confounder"][idx]}
    res = spray(a, masks=masks, grid=grid, seed=0)
    t2 = time.perf_counter()
    best = max(res.clusters, key=lambda c: marked[c.members].sum())
    flagged = np.concatenate([c.members for c in res.clusters if c.flag] or [np.zeros(0, dtype=int)])
    return {
        "n": int(idx.numel()),
        "marked": int(marked.sum()),
        "k": res.k,
        "eigenvalues": np.round(res.eigenvalues[:5], 3).tolist(),
        "sizes": [c.size for c in res.clusters],
        "best": best.index,
        "purity": float(marked[best.members].mean()),
        "recall": float(marked[best.members].sum() / max(1, marked.sum())),
        "flagged": res.flagged,
        "flagged_purity": float(marked[flagged].mean()) if flagged.size else float("nan"),
        "flagged_recall": float(marked[flagged].sum() / max(1, marked.sum())),
        "shares": [(round(c.shares["confounder"], 3), round(c.shares["mask"], 3)) for c in res.clusters],
        "explain_s": t1 - t0,
        "spray_s": t2 - t1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grids", default="32", help="comma-separated SpRAy grid sides")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from xaiscope.data.benchmark import make_dataset
    from xaiscope.models.train import accuracy, init_model, train

    common = {"n_train": args.n_train, "n_test": args.n_test, "size": args.size, "seed": args.seed}
    t0 = time.perf_counter()
    tr, te = make_dataset(**common, confounder_rate=args.rate)
    tr_clean, te_clean = make_dataset(**common, confounder_rate=1e-9)  # same images, no marker
    assert not te_clean.extra_masks["confounder"].any()
    te_moved = _moved(te_clean, np.random.default_rng(args.seed))
    print(f"data: {len(tr)} train, {len(te)} test images of {args.size}x{args.size}, {time.perf_counter() - t0:.1f} s")
    print(
        f"marked: {int(tr.extra_masks['confounder'].flatten(1).any(1).sum())} train, "
        f"{int(te.extra_masks['confounder'].flatten(1).any(1).sum())} test (class 1 only)"
    )
    for name, raw in (("confounded", tr), ("clean", tr_clean)):
        data = _normalised(raw, "dataset")
        stats = (data.mean, data.std)
        tests = {
            k: _normalised(d, stats) for k, d in (("as generated", te), ("no marker", te_clean), ("moved", te_moved))
        }
        net = init_model("small_cnn", seed=args.seed, in_channels=1, num_classes=2)
        r = train(
            net, data, epochs=args.epochs, lr=3e-3, batch_size=32, schedule="cosine", seed=args.seed, progress=False
        )
        acc = {k: accuracy(net, d) for k, d in tests.items()}
        per_class = {
            k: [accuracy(net, d.subset((d.y == c).nonzero().flatten())) for c in (0, 1)] for k, d in tests.items()
        }
        print(f"\n== model trained on {name} images ({r.seconds:.1f} s, train accuracy {r.train_acc:.3f})")
        print("test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        print(
            "per class (0, 1): "
            + ", ".join(f"{k} ({v[0]:.3f}, {v[1]:.3f})" for k, v in per_class.items())
            + f"; class-1 images marked in the test set: {s_marked_share(te):.2f}"
        )
        print(f"accuracy drop when the marker moves to class 0: {acc['as generated'] - acc['moved']:.3f}")
        for grid in [int(g) for g in args.grids.split(",") if g]:
            s = _spray(net, tests["as generated"], 1, grid)
            print(
                f"SpRAy grid {grid} on class 1 ({s['n']} images, {s['marked']} marked): k = {s['k']} "
                f"(eigenvalues {s['eigenvalues']}), sizes {s['sizes']}"
            )
            print(
                f"  cluster {s['best']} holds most marked images: purity {s['purity']:.3f}, recall {s['recall']:.3f}; "
                f"flagged: {s['flagged'] or 'none'} (together: purity {s['flagged_purity']:.3f}, "
                f"recall {s['flagged_recall']:.3f}); (confounder, lesion) shares {s['shares']}"
            )
            print(f"  time: explain {s['explain_s']:.1f} s, SpRAy {s['spray_s']:.1f} s")


if __name__ == "__main__":
    main()

"""Draw benchmark images, masks and confounders (vectorised numpy), in memory or on disk.

Image formation (per image, ``b`` background after jitter and noise, ``m`` soft lesion
mask, ``v`` lesion intensity)::

    x = clip(b + alpha * (sum_k m_k v_k - m b), 0, 1),   quantised to 8 bits

then the confounder marker (when drawn) replaces its square: ``x = 0.95`` there.
Ground truth: ``mask = m > 0`` (exactly the pixels the lesions change);
``confounder_mask`` = the marker's square.

Randomness: split ``s`` (train 0, test 1) draws from ``numpy.random.default_rng([seed, s])``;
the same parameters give the same arrays and byte-identical files. Synthetic annotators
(``annotators > 0``) draw from their own streams (:mod:`.annotators`), so they change no image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from xaiscope.data.benchmark import annotators as ann
from xaiscope.data.benchmark import backgrounds as bgs
from xaiscope.data.benchmark import lesions as les
from xaiscope.data.benchmark.params import BenchmarkParams
from xaiscope.data.dataset import Dataset
from xaiscope.errors import DataError, OutputError

SPLITS = ("train", "test")
CONFOUNDER_VALUE = 0.95
MAX_ROUNDS = 200
REDRAW_AFTER = 10


def confounder_box(size: int) -> tuple[int, int]:
    """Side of the marker square and the side of the corner zone it may occupy (top-left)."""
    side = max(3, round(size / 10))
    return side, side + 3


def _class_band(fg: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """``[n, 1, W]`` bool: columns of band ``y`` of ``k`` equal bands over each image's foreground columns."""
    n, h, w = fg.shape
    cols = fg.any(axis=1)  # [n, W]
    lo = cols.argmax(axis=1)
    hi = w - cols[:, ::-1].argmax(axis=1)
    a = lo + (hi - lo) * y / k
    b = lo + (hi - lo) * (y + 1) / k
    j = np.arange(w)[None, :] + 0.5
    return ((j >= a[:, None]) & (j < b[:, None]))[:, None, :]


def _lesion_specs(p: BenchmarkParams, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per image: lesion count, outline kind, area and intensity (kept when an image is redrawn)."""
    n, kmax, size = y.size, p.lesions[1], p.size
    count = rng.integers(p.lesions[0], p.lesions[1] + 1, size=n)
    present = np.arange(kmax)[None, :] < count[:, None]
    u = rng.random((n, kmax))
    mixed = (rng.random((n, kmax)) < 0.5).astype(np.int64)
    if p.rule == "shape":
        kind = np.broadcast_to(y[:, None], (n, kmax)).copy()
        r0, r1 = p.radius
    else:  # size rule: area range split in two equal-area halves by class, outlines mixed
        kind = mixed
        mid = np.sqrt((p.radius[0] ** 2 + p.radius[1] ** 2) / 2)
        r0 = np.where(y == 0, p.radius[0], mid)[:, None]
        r1 = np.where(y == 0, mid, p.radius[1])[:, None]
    area = np.pi * (size**2) * (r0**2 + u * (r1**2 - r0**2))  # uniform between the two discs' areas
    values = rng.uniform(p.intensity[0], p.intensity[1], size=(n, kmax)).astype(np.float32)
    # largest lesion first: greedy placement packs better
    order = np.argsort(-np.where(present, area, -1.0), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return {
        "count": count,
        "present": present,
        "kind": take(kind),
        "scale": take(np.sqrt(area)).astype(np.float32),
        "values": take(values),
    }


def _draw(
    p: BenchmarkParams,
    source,
    y: np.ndarray,
    spec: dict[str, np.ndarray],
    rng: np.random.Generator,
    forbid: np.ndarray | None,
):
    """One attempt for images with labels ``y``: background, outlines, placement (``ok`` says which fit)."""
    bg = bgs.sample(source, y.size, p.size, rng, aligned=p.aligned)
    prof = les.profiles(spec["kind"], rng, irregularity=p.irregularity)
    room = bg["dist"]
    if p.aligned:
        room = np.where(_class_band(bg["foreground"], y, len(p.classes)), room, 0.0)  # centres in the class band
    centres, ok = les.place(room, les.max_radius(prof, spec["scale"]), spec["present"], rng, forbid=forbid)
    return bg, {**spec, "prof": prof, "centres": centres}, ok


def make_split(p: BenchmarkParams, split: str, n: int | None = None, *, source=None) -> dict[str, np.ndarray]:
    """All arrays of one split.

    Returns
    -------
    dict with ``image`` uint8 ``[n,H,W]``, ``mask`` bool, ``confounder_mask`` bool,
    ``y`` int64, ``background`` float32 (before lesions), ``foreground`` bool,
    ``soft`` float32 (soft lesion mask), ``n_lesions``, ``lesion_area`` (mask pixels),
    ``confounded`` bool, and the crop provenance (``source_index``, ``crop_y``,
    ``crop_x``, ``flip_h``, ``flip_v``); with ``annotators > 0`` also ``annotator_masks``
    bool ``[n, annotators, H, W]``.
    """
    n = (p.n_train if split == "train" else p.n_test) if n is None else n
    size = p.size
    rng = np.random.default_rng([p.seed, SPLITS.index(split)])
    if source is None:
        source = bgs.load_source(p.background, size, aligned=p.aligned, zoom=p.zoom)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    confounded = np.zeros(n, dtype=bool)
    ones = np.flatnonzero(y == 1)
    confounded[rng.permutation(ones)[: int(round(p.confounder_rate * ones.size))]] = True
    side, zone = confounder_box(size)
    forbid = None
    if p.confounder_rate > 0:
        forbid = np.zeros((n, size, size), dtype=bool)
        forbid[:, : zone + 1, : zone + 1] = True
    out: dict[str, np.ndarray] = {}
    spec = _lesion_specs(p, y, rng)
    todo = np.arange(n)
    for attempt in range(MAX_ROUNDS):
        if attempt >= REDRAW_AFTER:  # crowded foreground: also redraw areas and intensities of what did not fit
            fresh = _lesion_specs(p, y[todo], rng)
            spec["scale"][todo], spec["values"][todo] = fresh["scale"], fresh["values"]
        sub = {k: v[todo] for k, v in spec.items()}
        bg, lz, ok = _draw(p, source, y[todo], sub, rng, None if forbid is None else forbid[todo])
        done = todo[ok]
        if not out:
            out = {k: np.zeros((n, *v.shape[1:]), dtype=v.dtype) for k, v in {**bg, **lz}.items()}
        for k, v in {**bg, **lz}.items():
            out[k][done] = v[ok]
        todo = todo[~ok]
        if todo.size == 0:
            break
    else:
        raise DataError(
            f"Lesions did not fit on the {p.background!r} foreground in {todo.size} of {n} {split} images "
            f"after {MAX_ROUNDS} tries; use a larger --size, fewer --lesions or a smaller radius."
        )
    gain = rng.uniform(1 - p.jitter, 1 + p.jitter, size=(n, 1, 1)).astype(np.float32)
    offset = rng.uniform(-p.jitter / 2, p.jitter / 2, size=(n, 1, 1)).astype(np.float32)
    pix = rng.standard_normal((n, size, size), dtype=np.float32) * np.float32(p.noise)
    b = np.clip((out["image"] - 0.4) * gain + 0.4 + offset + pix, 0, 1).astype(np.float32)
    m, mv = les.render(
        out["centres"], out["prof"], out["scale"], out["present"], size, edge=p.edge, values=out["values"]
    )
    x = np.clip(b + np.float32(p.alpha) * (mv - m * b), 0, 1)
    cmask = np.zeros((n, size, size), dtype=bool)
    if p.confounder_rate > 0:
        off = rng.integers(1, zone - side + 2, size=(n, 2))
        yy = np.arange(size)[None, :, None]
        xx = np.arange(size)[None, None, :]
        oy, ox = off[:, 0, None, None], off[:, 1, None, None]
        cmask = (yy >= oy) & (yy < oy + side) & (xx >= ox) & (xx < ox + side) & confounded[:, None, None]
        x = np.where(cmask, np.float32(CONFOUNDER_VALUE), x)
    mask = m > 0
    extra = {"annotator_masks": ann.annotate(mask, p.annotators, p.seed, SPLITS.index(split))} if p.annotators else {}
    return {
        **extra,
        "image": np.round(x * 255).astype(np.uint8),
        "mask": mask,
        "confounder_mask": cmask,
        "y": y,
        "background": b,
        "foreground": out["foreground"],
        "soft": m,
        "n_lesions": out["count"].astype(np.int64),
        "lesion_area": mask.reshape(n, -1).sum(axis=1),
        "confounded": confounded,
        **{k: out[k] for k in ("source_index", "crop_y", "crop_x", "flip_h", "flip_v")},
    }


def _ids(n: int) -> list[str]:
    width = max(5, len(str(max(0, n - 1))))
    return [f"{i:0{width}d}" for i in range(n)]


def _to_dataset(arr: dict[str, np.ndarray], p: BenchmarkParams, split: str) -> Dataset:
    n = arr["y"].size
    stems = _ids(n)
    order = np.lexsort((np.arange(n), arr["y"]))  # the order data.load_folder reads: class, then id
    classes = p.classes
    extra = {"confounder": torch.from_numpy(arr["confounder_mask"][order])} if p.confounder_rate > 0 else {}
    several = {}
    if p.annotators:
        extra["truth"] = torch.from_numpy(arr["mask"][order])
        several = {
            "annotator_masks": torch.from_numpy(arr["annotator_masks"][order]),
            "annotators": ann.names(p.annotators),
        }
    return Dataset(
        x=torch.from_numpy(arr["image"][order].astype(np.float32) / 255.0).unsqueeze(1),
        y=torch.from_numpy(arr["y"][order]),
        ids=[f"{classes[arr['y'][i]]}/{stems[i]}" for i in order],
        classes=classes,
        masks=None if p.annotators else torch.from_numpy(arr["mask"][order]),
        extra_masks=extra,
        source=f"benchmark:{p.background}:seed={p.seed}:{split}",
        **several,
    )


def make_dataset(**params) -> tuple[Dataset, Dataset]:
    """``(train, test)`` datasets in memory, exactly what :func:`generate` writes and ``load_folder`` reads back.

    Takes the settings of :class:`BenchmarkParams` (``n_train``, ``n_test``, ``size``,
    ``background``, ``alpha``, ``lesions``, ``confounder_rate``, ``aligned``, ``seed``, ``rule``,
    ...). Images are in [0, 1] (8-bit steps), not normalised; masks are the lesion masks;
    ``extra_masks["confounder"]`` is present when ``confounder_rate > 0``. With
    ``annotators > 0`` the synthetic annotators' masks are ``annotator_masks``, ``masks`` is
    their majority vote and the lesion masks are ``extra_masks["truth"]``.
    """
    p = BenchmarkParams.from_kwargs(**params)
    source = bgs.load_source(p.background, p.size, aligned=p.aligned, zoom=p.zoom)
    train = _to_dataset(make_split(p, "train", source=source), p, "train")
    test_arr = make_split(p, "test", source=source) if p.n_test > 0 else None
    test = _to_dataset(test_arr, p, "test") if test_arr is not None and p.n_test > 0 else train.subset([])
    return train, test


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_split(root: Path, arr: dict[str, np.ndarray], p: BenchmarkParams) -> list[dict]:
    classes = p.classes
    stems = _ids(arr["y"].size)
    folders = (
        [("", "image")]
        + [("true_masks" if p.annotators else "masks", "mask")]
        + ([("confounder_masks", "confounder_mask")] if p.confounder_rate > 0 else [])
    )
    folders = [(sub, lambda i, key=key: arr[key][i]) for sub, key in folders]
    for j, name in enumerate(ann.names(p.annotators)):
        folders.append((f"masks/{name}", lambda i, j=j: arr["annotator_masks"][i, j]))
    for sub, _ in folders:
        for c in classes:
            (root / sub / c).mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = []
    for i, stem in enumerate(stems):
        c = classes[arr["y"][i]]
        for sub, get in folders:
            jobs.append((root / sub / c / f"{stem}.png", get(i)))
        rows.append(
            {
                "id": f"{c}/{stem}",
                "label": int(arr["y"][i]),
                "class": c,
                "n_lesions": int(arr["n_lesions"][i]),
                "lesion_area": int(arr["lesion_area"][i]),
                "confounder": int(arr["confounded"][i]),
                "source_index": int(arr["source_index"][i]),
                "crop_y": int(arr["crop_y"][i]),
                "crop_x": int(arr["crop_x"][i]),
                "flip_h": int(arr["flip_h"][i]),
                "flip_v": int(arr["flip_v"][i]),
            }
        )

    def write(job) -> None:
        path, a = job
        path.write_bytes(_png(a if a.dtype == np.uint8 else a.astype(np.uint8) * 255))

    # zlib and file writes release the GIL: a few threads overlap encoding and I/O
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(write, jobs, chunksize=64):
            pass
    return rows


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out`` to write a benchmark into: on success it replaces
    ``out`` (an earlier benchmark there goes only then); on any failure it is removed and
    ``out`` is left as it was, an ``OSError`` becoming one sentence."""
    from xaiscope.io import ensure_dir

    ensure_dir(out.parent)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"Writing the benchmark to {out} failed ({e.strerror or e}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def check_out(out: Path) -> None:
    """A benchmark may be written to ``out`` when it does not exist, is empty or holds an earlier benchmark."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"The output path {out} is a file, not a folder.")
        if any(out.iterdir()) and not (out / "benchmark.json").exists():
            raise OutputError(f"The output folder {out} is not empty and holds no benchmark; choose a new folder.")


def generate(out: str | Path, **params) -> Path:
    """Write the benchmark to folder ``out`` and return the path of its ``benchmark.json``.

    Layout::

        out/benchmark.json                      every setting, classes, counts, version
        out/metadata.csv                        one row per image: split, id, label, lesions, area, confounder, crop
        out/train/<class>/<id>.png              8-bit grey images
        out/train/masks/<class>/<id>.png        lesion masks (0/255)
        out/train/masks/<annotator>/<class>/<id>.png   with annotators > 0: each synthetic
                                                annotator's masks; the lesion masks are then
        out/train/true_masks/<class>/<id>.png   (read as extra_masks["truth"])
        out/train/confounder_masks/<class>/...  marker masks (only when confounder_rate > 0)
        out/test/...                            the same for the test split

    The folder is built beside ``out`` and moved into place at the end, so a crash never
    leaves a half-written benchmark. An existing ``out`` is replaced only when it is empty
    or holds an earlier benchmark.
    """
    from xaiscope import __version__
    from xaiscope.io import write_json, write_text

    p = BenchmarkParams.from_kwargs(**params)
    out = Path(out)
    check_out(out)
    source = bgs.load_source(p.background, p.size, aligned=p.aligned, zoom=p.zoom)
    with staged_dir(out) as tmp:
        counts, confounded, rows = {}, {}, []
        for split in SPLITS:
            n = p.n_train if split == "train" else p.n_test
            if n == 0:
                continue
            arr = make_split(p, split, source=source)
            split_rows = _write_split(tmp / split, arr, p)
            rows += [{"split": split, **r} for r in split_rows]
            counts[split] = {c: int((arr["y"] == k).sum()) for k, c in enumerate(p.classes)}
            confounded[split] = int(arr["confounded"].sum())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(tmp / "metadata.csv", buf.getvalue())
        write_json(
            tmp / "benchmark.json",
            {
                "kind": "xaiscope-benchmark",
                "xaiscope_version": __version__,
                "params": p.to_dict(),
                "classes": p.classes,
                "counts": counts,
                "confounded": confounded,
                "truth": {
                    "masks": "masks/<class>/<id>.png: pixels changed by a lesion"
                    if not p.annotators
                    else "masks/<annotator>/<class>/<id>.png: synthetic annotators "
                    + ", ".join(ann.names(p.annotators))
                    + "; true_masks/<class>/<id>.png: pixels changed by a lesion",
                    "confounder_masks": "confounder_masks/<class>/<id>.png: the corner marker"
                    if p.confounder_rate > 0
                    else None,
                },
                "read_with": "xaiscope.data.load_folder(DIR/'train')",
            },
        )
    return out / "benchmark.json"

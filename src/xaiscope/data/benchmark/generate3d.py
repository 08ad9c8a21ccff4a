"""Write the 3D lesion benchmark to a folder of NIfTI volumes (see :mod:`.volumes` for the data).

Every volume is written as ``nibabel.Nifti1Image(vol_dhw, affine_dhw)``: the array in the
``(d, h, w)`` order of :class:`~xaiscope.data.Dataset` volumes with the voxel-to-world matrix
of that order (sform, RAS mm), gzip-compressed with a zero time stamp, so the same
arguments give byte-identical files and ``nibabel.load`` gives back the same array and
affine.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xaiscope.data.benchmark.generate import SPLITS, _ids, check_out, staged_dir
from xaiscope.data.benchmark.params import VolumeParams
from xaiscope.data.benchmark.volumes import make_split, template


def nifti_bytes(vol: np.ndarray, affine: np.ndarray) -> bytes:
    """``.nii.gz`` bytes of ``vol`` ``[D, H, W]`` (float32 or uint8) with voxel-to-world ``affine``."""
    import nibabel as nib

    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _write_split(root: Path, arr: dict[str, np.ndarray], p: VolumeParams) -> list[dict]:
    classes = p.classes
    stems = _ids(arr["y"].size)
    affine = arr["affine"]
    folders = [("", lambda i: arr["image"][i]), ("masks", lambda i: arr["mask"][i].astype(np.uint8))]
    if p.confounder_rate > 0:
        folders.append(("confounder_masks", lambda i: arr["confounder_mask"][i].astype(np.uint8)))
    for sub, _ in folders:
        for c in classes:
            (root / sub / c).mkdir(parents=True, exist_ok=True)
    jobs, rows = [], []
    for i, stem in enumerate(stems):
        c = classes[arr["y"][i]]
        jobs += [(root / sub / c / f"{stem}.nii.gz", get, i) for sub, get in folders]
        rows.append(
            {
                "id": f"{c}/{stem}",
                "label": int(arr["y"][i]),
                "class": c,
                "n_lesions": int(arr["n_lesions"][i]),
                "lesion_voxels": int(arr["lesion_voxels"][i]),
                "confounder": int(arr["confounded"][i]),
            }
        )

    def write(job) -> None:
        path, get, i = job
        path.write_bytes(nifti_bytes(get(i), affine))

    # zlib and file writes release the GIL: a few threads overlap compression and I/O
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(write, jobs, chunksize=16):
            pass
    return rows


def generate_3d(out: str | Path, **params) -> Path:
    """Write the 3D benchmark to folder ``out`` and return the path of its ``benchmark.json``.

    Layout::

        out/benchmark.json                          every setting, classes, counts, affine, version
        out/metadata.csv                            one row per volume: split, id, label, lesions, voxels, confounder
        out/brain_mask.nii.gz                       the template's brain mask (uint8 0/1)
        out/train/<class>/<id>.nii.gz               volumes (float32)
        out/train/masks/<class>/<id>.nii.gz         lesion masks (uint8 0/1)
        out/train/confounder_masks/<class>/...      marker masks (only when confounder_rate > 0)
        out/test/...                                the same for the test split

    Takes the settings of :class:`~xaiscope.data.benchmark.params.VolumeParams`. The folder is
    built beside ``out`` and moved into place at the end, so a crash never leaves a
    half-written benchmark; an existing ``out`` is replaced only when it is empty or holds
    an earlier benchmark.
    """
    from xaiscope import __version__
    from xaiscope.io import write_json, write_text

    p = VolumeParams.from_kwargs(**params)
    out = Path(out)
    check_out(out)
    tpl = template(p.size, p.tissue)
    with staged_dir(out) as tmp:
        counts, confounded, rows = {}, {}, []
        for split in SPLITS:
            n = p.n_train if split == "train" else p.n_test
            if n == 0:
                continue
            arr = make_split(p, split)
            rows += [{"split": split, **r} for r in _write_split(tmp / split, arr, p)]
            counts[split] = {c: int((arr["y"] == k).sum()) for k, c in enumerate(p.classes)}
            confounded[split] = int(arr["confounded"].sum())
        (tmp / "brain_mask.nii.gz").write_bytes(nifti_bytes(tpl.brain.astype(np.uint8), tpl.affine))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(tmp / "metadata.csv", buf.getvalue())
        write_json(
            tmp / "benchmark.json",
            {
                "kind": "xaiscope-benchmark",
                "dims": 3,
                "xaiscope_version": __version__,
                "params": p.to_dict(),
                "classes": p.classes,
                "counts": counts,
                "confounded": confounded,
                "background": "nilearn MNI152 T1 template (2009, 2 mm), resampled to size (D, H, W)",
                "affine": tpl.affine.tolist(),
                "truth": {
                    "masks": "masks/<class>/<id>.nii.gz: voxels changed by a lesion",
                    "confounder_masks": "confounder_masks/<class>/<id>.nii.gz: the corner marker"
                    if p.confounder_rate > 0
                    else None,
                    "brain_mask": "brain_mask.nii.gz: every lesion lies inside it",
                },
                "read_with": "nibabel.load(FILE): array axes (d, h, w); affine maps (d, h, w, 1) to RAS mm",
            },
        )
    return out / "benchmark.json"

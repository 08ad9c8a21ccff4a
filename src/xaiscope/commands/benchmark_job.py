"""The ``xaiscope benchmark`` job: generate the ground-truth benchmark (2D or, with ``--3d``, volumes) and summarise it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from xaiscope.errors import ConfigError

ONLY_2D = ("background", "aligned", "rule", "annotators")
ONLY_3D = ("tissue",)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_benchmark(*, out: Path, console=None, three_d: bool = False, **params) -> Path:
    """Write the benchmark to ``out`` and print a summary.

    2D: :func:`xaiscope.data.benchmark.generate`; 3D (``three_d``): :func:`xaiscope.data.benchmark.generate_3d`.
    Settings left at ``None`` take the generator's default; a setting of the other kind of
    benchmark is one sentence.
    """
    from xaiscope.data.benchmark import generate, generate_3d

    given = {k: v for k, v in params.items() if v is not None}
    if three_d:
        wrong = [k for k in ONLY_2D if k in given]
        if wrong:
            raise ConfigError(
                f"{_option(wrong[0])} applies to the 2D benchmark only; the 3D benchmark (--3d) always uses the "
                "MNI152 brain with shape-coded lesions."
            )
    else:
        wrong = [k for k in ONLY_3D if k in given]
        if wrong:
            raise ConfigError(f"{_option(wrong[0])} applies to the 3D benchmark only; add --3d.")
        if "size" in given:
            try:
                given["size"] = int(str(given["size"]).strip())
            except ValueError:
                raise ConfigError(
                    f"--size of a 2D benchmark is one number of pixels, got {given['size']!r}; D,H,W sizes need --3d."
                ) from None
    start = time.perf_counter()
    path = (generate_3d if three_d else generate)(out, **given)
    seconds = time.perf_counter() - start
    if console is not None:
        info = json.loads(Path(path).read_text())
        what = "volumes" if three_d else "images"
        for split in ("train", "test"):
            counts = info["counts"].get(split)
            if not counts:
                continue
            parts = ", ".join(f"{c}: {k}" for c, k in counts.items())
            conf = info["confounded"].get(split, 0)
            console.print(f"{split}: {sum(counts.values())} {what} ({parts}); confounder in {conf}")
        read = "nibabel.load(FILE)" if three_d else f"xaiscope.data.load_folder('{out}/train')"
        console.print(f"wrote {out} in {seconds:.1f} s; read it with {read}")
    return path

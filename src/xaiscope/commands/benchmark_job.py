"""The ``xaiscope benchmark`` job: generate the ground-truth benchmark and summarise it."""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_benchmark(*, out: Path, console=None, **params) -> Path:
    """Write the benchmark to ``out`` (see :func:`xaiscope.data.benchmark.generate`); print a summary."""
    from xaiscope.data.benchmark import generate

    start = time.perf_counter()
    path = generate(out, **params)
    seconds = time.perf_counter() - start
    if console is not None:
        info = json.loads(Path(path).read_text())
        for split in ("train", "test"):
            counts = info["counts"].get(split)
            if not counts:
                continue
            parts = ", ".join(f"{c}: {k}" for c, k in counts.items())
            conf = info["confounded"].get(split, 0)
            console.print(f"{split}: {sum(counts.values())} images ({parts}); confounder in {conf}")
        console.print(f"wrote {out} in {seconds:.1f} s; read a split with xaiscope.data.load_folder('{out}/train')")
    return path

"""Shared pieces of the reliability tests: tiny data, odd models, file snapshots, forked runs.

``run_forked`` runs ``xaiscope ARGS`` in a real child process forked from a
``multiprocessing`` fork server that imported xaiscope (and torch) once, so a test can
start, SIGKILL and restart ``xaiscope run`` many times without paying the import cost
(several seconds) each time. The fork server itself never runs torch code, so forking
it is safe.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

# ---------------------------------------------------------------------------- data


def write_png(path: Path, arr: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_1bit_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit gray PNG of ``width x height`` pixels, written row by row with
    zlib (no image is held in memory): 20000 x 20000 pixels take about 50 kB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    block = row * 1000
    data = b"".join(z.compress(block) for _ in range(height // 1000)) + z.compress(row * (height % 1000)) + z.flush()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def make_folder(root: Path, *, n: int = 3, size: int = 16, masks: bool = False, seed: int = 0) -> Path:
    """``root/{a,b}/{0..n-1}.png`` gray 8-bit images (and ``root/masks/...`` square masks)."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        for i in range(n):
            write_png(root / c / f"{i}.png", rng.integers(0, 255, (size, size), dtype=np.uint8))
            if masks:
                m = np.zeros((size, size), np.uint8)
                m[size // 4 : size // 2, size // 4 : size // 2] = 255
                write_png(root / "masks" / c / f"{i}.png", m)
    return root


def make_npz(
    path: Path,
    *,
    n: int = 12,
    size: int = 16,
    masks: bool = True,
    seed: int = 0,
    bright: tuple[int, ...] = (),
    labels=None,
) -> Path:
    """``n`` gray ``size x size`` images in ``[0, 0.5)`` (ids ``img00``...), labels 0/1 alternating,
    square masks; images listed in ``bright`` are lifted to ``[0.7, 1)``."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1, size, size)) * 0.5).astype(np.float32)
    for i in bright:
        x[i] = 0.7 + 0.3 * rng.random((1, size, size)).astype(np.float32)
    y = np.array([i % 2 for i in range(n)]) if labels is None else np.asarray(labels)
    arrays = {"x": x, "y": y, "ids": np.array([f"img{i:02d}" for i in range(n)])}
    if masks:
        m = np.zeros((n, size, size), bool)
        m[:, size // 4 : size // 2 + 2, size // 4 : size // 2 + 2] = True
        arrays["masks"] = m
    np.savez(path, **arrays)
    return Path(path)


# ---------------------------------------------------------------------------- models


def mlp(num_classes: int = 2, in_channels: int = 1) -> nn.Module:
    """A model without any convolution (for CAM-family errors): flatten + linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


# ---------------------------------------------------------------------------- files


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (hidden temp files included)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(root: Path) -> list[str]:
    """Left-over temporary files of atomic writers (ours: ``.NAME.XXXX.tmp``; zarr: ``*.partial``)."""
    return sorted(
        str(p)
        for p in Path(root).rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".partial"))
    )


# ---------------------------------------------------------------------------- forked CLI runs

PRELOAD = [
    "xaiscope.cli",
    "xaiscope.run.runner",
    "xaiscope.commands.analyses_job",
    "xaiscope.explain",
    "xaiscope.evaluate",
    "zarr",
    "pandas",
    "pyarrow.parquet",
    "fixture_models",
]


def _child(args: list[str], log: str, threads: int) -> None:  # runs in the forked child
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(threads)
    torch.seed()  # a fresh global random state, as a newly started process has (forks would share one)
    from xaiscope.cli import main

    try:
        main(args)
    except SystemExit as e:
        os._exit(int(e.code or 0))
    os._exit(0)


_CTX = None


def fork_context():
    """The shared fork-server context (started once, with xaiscope preloaded)."""
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


def start_forked(args: list[str], log: Path, *, threads: int = 1):
    """Start ``xaiscope ARGS`` in a forked child; returns the ``Process`` (stdout+stderr go to ``log``)."""
    p = fork_context().Process(target=_child, args=([str(a) for a in args], str(log), threads), daemon=True)
    p.start()
    return p

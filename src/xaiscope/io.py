"""Atomic file writes shared by every layer that writes results.

A file is written to a temporary name in the same folder and renamed into place, so a
crash (or a full disk) never leaves a half-written result, and an earlier result with
the same name stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from xaiscope.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def ensure_dir(path: str | Path) -> Path:
    """Create folder ``path`` (and parents); a clear error when it is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"The output path {path} is a file, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"The output folder {path} cannot be created ({e.strerror}).") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"The output folder {path} is not writable.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Writing {path} failed ({e.strerror or e}); earlier results are unchanged.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: str | Path, **arrays) -> None:
    """A compressed ``.npz`` of ``arrays``, written atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def write_parquet(path: str | Path, table) -> None:
    """A Parquet file of the DataFrame ``table`` (no index column), written atomically."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """A CSV of ``rows`` (a header from ``columns`` when there are no rows), written atomically."""
    import pandas as pd

    write_text(path, pd.DataFrame(rows, columns=columns if not rows else None).to_csv(index=False))


def safe_name(s: str) -> str:
    """A file-name-safe version of an id or label (``/`` and odd characters become ``_``)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))
    return keep.strip(".") or "_"

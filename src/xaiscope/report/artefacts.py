"""Find the outputs of the optional analyses (global maps, PEPPR, variability, SIS, SpRAy,
several annotators, meta-evaluation) in a run.

These analyses write PNG figures and small JSON / CSV / Parquet summaries under
``RUN/figures/`` and ``RUN/analyses/``, either as files named with the section's prefix
(``figures/peppr_lesion.png``, ``analyses/variability_fits.json``) or inside a folder so
named (``analyses/global/maps/overall.png``). A file belongs to the section whose prefix
starts its own name, else to the one that starts the nearest enclosing folder's name;
files that match no prefix are not shown here. The report renders each section
generically: the figures embedded, the summaries as tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

SECTIONS = {
    "global": "Global label-wise maps",
    "peppr": "PEPPR: progressive erasing and restoration",
    "variability": "Explanation variability across models",
    "sis": "Sufficient input subsets (SIS)",
    "spray": "Explanation strategies per class (SpRAy)",
    "annotators": "Several annotators: do the methods agree with the experts as the experts agree with each other?",
    "meta": "Metric reliability (meta-evaluation, MetaQuantus protocol)",
}
TABLE_SUFFIXES = (".parquet", ".csv", ".json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Artefacts:
    key: str
    title: str
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def section_of(rel: Path) -> str | None:
    """The section a file at ``rel`` (relative to figures/ or analyses/) belongs to."""
    for part in (rel.name, *reversed(rel.parts[:-1])):
        for key in SECTIONS:
            if part.lower().startswith(key):
                return key
    return None


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        out = []
        for i, v in enumerate(obj):
            out += _flatten(v, f"{prefix}.{i}" if prefix else str(i))
        return out
    if isinstance(obj, list):
        return [(prefix, ", ".join(str(v) for v in obj))]
    return [(prefix, obj)]


def json_table(obj: Any) -> pd.DataFrame:
    """A table from parsed JSON: a list of flat records as rows, anything else as key/value pairs."""
    if (
        isinstance(obj, list)
        and obj
        and all(isinstance(r, dict) for r in obj)
        and all(not isinstance(v, (dict, list)) for r in obj for v in r.values())
    ):
        return pd.DataFrame(obj)
    return pd.DataFrame(_flatten(obj), columns=["key", "value"])


def read_table(path: Path) -> pd.DataFrame:
    """A summary file as a table (errors propagate; the caller notes them)."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return json_table(json.loads(path.read_text()))


def collect(root: Path, *, max_figures: int = 48, max_png_bytes: int = 4_000_000) -> list[Artefacts]:
    """The optional analyses' figures and summaries found under ``root``, by section (empty
    sections are left out)."""
    found = {k: Artefacts(k, t) for k, t in SECTIONS.items()}
    files: list[tuple[Path, Path]] = []
    for base in (root / "figures", root / "analyses"):
        if base.is_dir():
            files += [
                (p, p.relative_to(root)) for p in sorted(base.rglob("*")) if p.is_file() and not p.name.startswith(".")
            ]
    tables_seen: set[tuple[Path, str]] = set()
    # prefer parquet, then csv, then json for summaries with the same stem in the same folder
    order = {".parquet": 0, ".csv": 1, ".json": 2}
    files.sort(key=lambda t: (str(t[1].with_suffix("")), order.get(t[1].suffix, 3)))
    for path, rel in files:
        key = section_of(rel.relative_to(rel.parts[0]))
        if key is None:
            continue
        art = found[key]
        if path.suffix.lower() == ".png":
            data = path.read_bytes()
            if not data.startswith(PNG_MAGIC) or len(data) > max_png_bytes or len(art.figures) >= max_figures:
                art.left_out.append(str(rel))
                continue
            art.figures.append((str(rel), data))
        elif path.suffix in TABLE_SUFFIXES:
            stem = (rel.parent, path.stem)
            if stem in tables_seen:
                continue
            try:
                art.tables.append((str(rel), read_table(path)))
                tables_seen.add(stem)
            except (OSError, ValueError, UnicodeDecodeError):
                art.left_out.append(str(rel))
    for art in found.values():
        art.figures.sort(key=lambda t: t[0])
        art.tables.sort(key=lambda t: t[0])
    return [a for a in found.values() if a.figures or a.tables or a.left_out]

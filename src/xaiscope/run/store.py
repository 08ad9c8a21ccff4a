"""The run directory: an on-disk, resumable store of one run.

Layout::

    RUN/config.yaml            the resolved configuration
    RUN/manifest.json          versions, seeds, device, dataset fingerprint, timings, skipped images
    RUN/attributions.zarr      <model>/<method>/<setting key>: raw attributions [N, C, H, W],
                               chunked by work unit (``unit_images`` images)
    RUN/units/<unit>.parquet   one committed work unit's score rows (the commit marker)
    RUN/units/<unit>.curves.parquet   its deletion/insertion curves
    RUN/results.parquet        all score rows: image_id, label, target, model, method, setting,
                               metric, value (consolidated from units/)
    RUN/curves.parquet         all curve rows: ..., metric, step, fraction, value
    RUN/analyses/              ranking, sensitivity, global maps, variability, SIS outputs
    RUN/figures/               PNG figures
    RUN/report.html            the report

A unit is committed by first writing its attribution chunk, then renaming its parquet
file into place; a unit whose parquet file exists is finished and skipped on resume, so a
run killed at any point resumes with no duplicate, missing or half-written rows.

Each unit's parquet file carries, in its schema metadata (pandas ``attrs``, key ``xaiscope.unit``), the
record of the inputs it was computed from: the model's weights hash, the hash of the
method and metric settings, the normalisation, and per image its id, label, pixel hash
and mask hash (:meth:`RunStore.unit_record`). Written in the same atomic rename as the
rows, the record can never disagree with them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaiscope.errors import OutputError
from xaiscope.io import ensure_dir, write_json, write_parquet, write_text

UNIT_RECORD_KEY = "xaiscope.unit"
RESULT_COLUMNS = ["image_id", "label", "target", "model", "method", "setting", "metric", "value"]
CURVE_COLUMNS = ["image_id", "model", "method", "setting", "metric", "step", "fraction", "value"]


def _without_attrs(df: pd.DataFrame) -> pd.DataFrame:
    df.attrs = {}
    return df


def setting_key(model: str, method: str, setting: str) -> str:
    """Zarr path of one (model, method, setting) array (the setting is hashed: it may hold any character)."""
    digest = hashlib.sha1(setting.encode()).hexdigest()[:12]
    return f"{model}/{method}/s{digest}"


class RunStore:
    """Read and write one run directory (see the module docstring)."""

    def __init__(self, root: str | Path, *, create: bool = False):
        self.root = Path(root)
        if create:
            ensure_dir(self.root)
        elif not self.root.is_dir():
            raise OutputError(f"The run folder {self.root} does not exist.")

    # paths
    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    @property
    def zarr_path(self) -> Path:
        return self.root / "attributions.zarr"

    @property
    def figures(self) -> Path:
        return ensure_dir(self.root / "figures")

    @property
    def analyses(self) -> Path:
        return ensure_dir(self.root / "analyses")

    # config and manifest
    def write_config(self, text: str) -> None:
        write_text(self.root / "config.yaml", text)

    def read_config_text(self) -> str | None:
        p = self.root / "config.yaml"
        return p.read_text() if p.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.root / "manifest.json", manifest)

    def read_manifest(self) -> dict[str, Any]:
        p = self.root / "manifest.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def clear(self) -> None:
        """Remove every computed result (``--force``)."""
        for name in ("units", "attributions.zarr", "analyses", "figures"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in ("results.parquet", "curves.parquet", "report.html", "manifest.json"):
            (self.root / name).unlink(missing_ok=True)

    # units
    def unit_path(self, unit_id: str) -> Path:
        return self.units_dir / f"{unit_id}.parquet"

    def is_done(self, unit_id: str) -> bool:
        return self.unit_path(unit_id).exists()

    def unit_ids(self) -> set[str]:
        """Ids of every committed unit."""
        if not self.units_dir.exists():
            return set()
        return {
            p.name[: -len(".parquet")]
            for p in self.units_dir.glob("*.parquet")
            if not p.name.endswith(".curves.parquet") and not p.name.startswith(".")
        }

    def unit_record(self, unit_id: str) -> dict[str, Any] | None:
        """The input record a committed unit was written with (None when it has none)."""
        import pyarrow.parquet as pq

        try:
            meta = pq.read_schema(self.unit_path(unit_id)).metadata or {}
            attrs = json.loads(meta.get(b"PANDAS_ATTRS") or b"{}")
        except (OSError, ValueError):
            return None
        record = attrs.get(UNIT_RECORD_KEY) if isinstance(attrs, dict) else None
        return record if isinstance(record, dict) else None

    def remove_unit(self, unit_id: str) -> None:
        """Delete a committed unit's rows and curves (its attribution chunk is overwritten when recomputed)."""
        self.unit_path(unit_id).unlink(missing_ok=True)
        (self.units_dir / f"{unit_id}.curves.parquet").unlink(missing_ok=True)

    def _array(self, key: str, shape: tuple[int, ...], chunk: int, attrs: dict[str, Any]):
        import zarr

        group = zarr.open_group(str(self.zarr_path), mode="a")
        if key in group and group[key].shape != shape:  # the data now has another number of images
            group[key].resize(shape)
        arr = group.require_array(key, shape=shape, chunks=(chunk, *shape[1:]), dtype="float32", fill_value=np.nan)
        if not arr.attrs.get("setting"):
            arr.attrs.update(attrs)
        return arr

    def commit_unit(
        self,
        unit_id: str,
        *,
        key: str,
        shape: tuple[int, ...],
        chunk: int,
        start: int,
        attributions: np.ndarray,
        rows: pd.DataFrame,
        curves: pd.DataFrame | None,
        attrs: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> None:
        """Write a unit's attribution chunk, then commit its rows (with its input ``record``) atomically."""
        try:
            arr = self._array(key, shape, chunk, attrs)
            arr[start : start + attributions.shape[0]] = attributions.astype(np.float32)
        except OSError as e:
            raise OutputError(
                f"Writing attributions to {self.zarr_path} failed ({e.strerror or e}); finished units are kept."
            ) from None
        ensure_dir(self.units_dir)
        if curves is not None and len(curves):
            write_parquet(self.units_dir / f"{unit_id}.curves.parquet", curves)
        if record is not None:
            rows = rows.copy(deep=False)
            rows.attrs = {UNIT_RECORD_KEY: record}  # pandas keeps attrs in the file's schema metadata
        write_parquet(self.unit_path(unit_id), rows)

    def consolidate(self) -> pd.DataFrame:
        """Gather committed units into results.parquet and curves.parquet (sorted, deterministic)."""
        parts = (
            sorted(p for p in self.units_dir.glob("*.parquet") if not p.name.endswith(".curves.parquet"))
            if self.units_dir.exists()
            else []
        )
        frames = [_without_attrs(pd.read_parquet(p)) for p in parts]
        results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
        results = results.sort_values(["model", "method", "setting", "metric", "image_id"], kind="stable").reset_index(
            drop=True
        )
        self.write_results(results)
        cparts = sorted(self.units_dir.glob("*.curves.parquet")) if self.units_dir.exists() else []
        curves = (
            pd.concat([_without_attrs(pd.read_parquet(p)) for p in cparts], ignore_index=True)
            if cparts
            else pd.DataFrame(columns=CURVE_COLUMNS)
        )
        curves = curves.sort_values(
            ["model", "method", "setting", "metric", "image_id", "step"], kind="stable"
        ).reset_index(drop=True)
        write_parquet(self.root / "curves.parquet", curves)
        return results

    def write_results(self, results: pd.DataFrame) -> None:
        """Write ``results.parquet`` (atomically)."""
        write_parquet(self.root / "results.parquet", results)

    # reading
    def results(self) -> pd.DataFrame:
        p = self.root / "results.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame(columns=RESULT_COLUMNS)

    def curves(self) -> pd.DataFrame:
        p = self.root / "curves.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame(columns=CURVE_COLUMNS)

    def attributions(self, model: str, method: str, setting: str, index=slice(None)) -> np.ndarray:
        """Raw attributions of one (model, method, setting), rows ``index``."""
        import zarr

        group = zarr.open_group(str(self.zarr_path), mode="r")
        return np.asarray(group[setting_key(model, method, setting)][index])

"""Volumes on disk for the tests: NIfTI files, DICOM series and TIFF stacks they write themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nifti(path: Path, data_ijk: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_ijk, affine), str(path))
    return path


def oblique_affine() -> np.ndarray:
    """A non-identity voxel-to-RAS affine: axes permuted and flipped, anisotropic voxels, an offset."""
    return np.array(
        [
            [0.0, 0.0, -1.5, 40.0],  # x (R) runs against k
            [-2.0, 0.0, 0.0, 60.0],  # y (A) runs against i
            [0.0, 3.0, 0.0, -20.0],  # z (S) runs along j
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def write_dicom_series(
    folder: Path,
    volume_kji: np.ndarray,
    *,
    spacing=(2.5, 0.8, 0.9),
    origin=(-50.0, -60.0, 10.0),
    slope: float = 2.0,
    intercept: float = -1024.0,
    skip: int | None = None,
    shuffle_seed: int = 0,
) -> list[Path]:
    """One file per axial slice of ``volume_kji`` (uint16 stored values), written in a
    shuffled order with patient fields that must never be read; ``skip`` leaves one slice out."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    dz, dr, dc = spacing
    series = generate_uid()
    order = np.random.default_rng(shuffle_seed).permutation(volume_kji.shape[0])
    paths = []
    for n, k in enumerate(order.tolist()):
        if skip is not None and k == skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{n:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "SECRET-123"
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * dz]
        ds.PixelSpacing = [dr, dc]
        ds.SliceThickness = dz
        ds.InstanceNumber = k + 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        plane = volume_kji[k].astype(np.uint16)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = plane.tobytes()
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        paths.append(path)
    return paths

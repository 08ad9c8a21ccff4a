"""Volumes: NIfTI, DICOM series and TIFF stacks read in one canonical orientation with their
affines; folder sources of volumes; the errors users get on bad volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from volume_helpers import oblique_affine, write_dicom_series, write_nifti
from xaiscope.data import volumes
from xaiscope.data.lazy import FolderSource
from xaiscope.data.readers import normalise_dataset, read_image, read_mask
from xaiscope.errors import DataError

LIMIT = 10**9


def _world(aff: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (aff @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]


def _indices(shape, n=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in shape], axis=1)


def test_nifti_with_an_oblique_affine_reads_canonical_and_keeps_every_voxel_in_place(tmp_path):
    data = np.random.default_rng(1).normal(size=(7, 5, 6)).astype(np.float32)
    aff = oblique_affine()
    path = write_nifti(tmp_path / "v.nii.gz", data, aff)
    vol, got = volumes.read_volume(path, LIMIT)
    assert vol.shape[0] == 1 and vol.dtype == np.float32
    # canonical RAS stored (k, j, i): w runs along +x, h along +y, d along +z
    assert got[0, 2] > 0 and got[1, 1] > 0 and got[2, 0] > 0
    assert np.allclose(np.abs(got[:3, :3]).sum(axis=0), [3.0, 2.0, 1.5])  # d: 3 mm (z), h: 2 mm (y), w: 1.5 mm (x)
    idx = _indices(vol.shape[1:])
    world = _world(got, idx)
    ijk = np.rint(_world(np.linalg.inv(aff), world)).astype(int)
    assert np.array_equal(vol[0][tuple(idx.T)], data[tuple(ijk.T)])
    shape, header_aff = volumes.volume_geometry(path)
    assert shape == vol.shape[1:] and np.allclose(header_aff, got)


def test_a_map_written_as_nifti_reads_back_with_the_same_affine(tmp_path):
    data = np.random.default_rng(2).random((6, 4, 5)).astype(np.float32)
    vol, aff = volumes.read_volume(write_nifti(tmp_path / "v.nii", data, oblique_affine()), LIMIT)
    out = tmp_path / "map.nii.gz"
    out.write_bytes(volumes.write_nifti(out, vol[0] * 2, aff))
    back, back_aff = volumes.read_volume(out, LIMIT)
    assert np.allclose(back[0], vol[0] * 2) and np.allclose(back_aff, aff)


def test_nifti_scaling_and_channels(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 3 * 2 * 2, dtype=np.int16).reshape(4, 3, 2, 2)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "c.nii"))
    vol, _ = volumes.read_volume(tmp_path / "c.nii", LIMIT)
    assert vol.shape == (2, 2, 3, 4)
    assert np.allclose(vol[1, 1, 2, 3], data[3, 2, 1, 1] * 0.5 + 10.0)


def test_dicom_series_is_ordered_by_position_rescaled_and_placed(tmp_path):
    stored = np.random.default_rng(3).integers(0, 4000, size=(6, 5, 7)).astype(np.uint16)  # [k, row, col]
    folder = tmp_path / "series"
    write_dicom_series(folder, stored, spacing=(2.5, 0.8, 0.9), origin=(-50.0, -60.0, 10.0))
    vol, aff = volumes.read_volume(folder, LIMIT)
    assert vol.shape == (1, 6, 5, 7)
    idx = _indices(vol.shape[1:], seed=4)
    x, y, z = _world(aff, idx).T
    lps = np.c_[-x, -y, z]
    k = np.rint((lps[:, 2] - 10.0) / 2.5).astype(int)
    r = np.rint((lps[:, 1] + 60.0) / 0.8).astype(int)
    c = np.rint((lps[:, 0] + 50.0) / 0.9).astype(int)
    assert np.allclose(vol[0][tuple(idx.T)], stored[k, r, c] * 2.0 - 1024.0)
    assert volumes.volume_geometry(folder)[0] == (6, 5, 7)


def test_dicom_series_with_a_missing_slice_is_one_sentence(tmp_path):
    stored = np.zeros((6, 4, 4), np.uint16)
    write_dicom_series(tmp_path / "s", stored, skip=3)
    with pytest.raises(DataError, match=r"has missing slices: 5 mm between .* 2.5 mm apart"):
        volumes.read_volume(tmp_path / "s", LIMIT)


def test_tiff_stack_reads_as_a_volume_with_its_voxel_size(tmp_path):
    import tifffile

    stack = np.random.default_rng(5).integers(0, 255, size=(5, 6, 7)).astype(np.uint8)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"spacing": 2.0, "axes": "ZYX"})
    vol = read_image(path)
    assert vol.shape == (1, 5, 6, 7) and np.allclose(vol[0], stack / 255.0)
    _, aff = volumes.read_volume(path, LIMIT)
    assert np.allclose(_world(aff, np.array([[1, 1, 1]])), [[0.5, 0.5, 2.0]])


def _volume_folder(tmp_path: Path, n: int = 3, shape=(6, 8, 10), masks: bool = True) -> Path:
    rng = np.random.default_rng(6)
    root = tmp_path / "vols"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    for cls in ("a", "b"):
        for k in range(n):
            ijk = rng.normal(size=shape[::-1]).astype(np.float32)
            write_nifti(root / cls / f"{cls}{k}.nii.gz", ijk, aff)
            if masks:
                m = np.zeros(shape[::-1], np.uint8)
                m[2:5, 3:6, 1:4] = 1
                write_nifti(root / "masks" / cls / f"{cls}{k}.nii.gz", m, aff)
    return root


def test_a_folder_of_nifti_volumes_is_a_source_of_volumes_with_masks_and_affines(tmp_path):
    root = _volume_folder(tmp_path)
    src = FolderSource(root)
    assert src.shape == (1, 6, 8, 10) and src.spatial_dims == 3 and src.has_masks
    assert src.ids[0] == "a/a0"
    batch = next(iter(src.batches(4)))
    assert batch.x.shape == (4, 1, 6, 8, 10) and batch.masks.shape == (4, 6, 8, 10)
    assert int(batch.masks[0].sum()) == 27
    ds = src.take()
    assert ds.spatial_dims == 3 and ds.affines.shape == (6, 4, 4)
    assert np.allclose(ds.affines[0], src.affine(0))
    assert ds.fill_value().shape == (1, 1, 1, 1)
    streamed = FolderSource(root, normalise="dataset")
    streamed.settle_normalisation()
    in_memory = normalise_dataset(FolderSource(root).take(), "dataset")
    assert np.allclose(streamed.mean, in_memory.mean) and np.allclose(streamed.std, in_memory.std)
    assert torch.allclose(next(iter(streamed.batches(6))).x, in_memory.x, atol=1e-5)


def test_resizing_volumes_keeps_voxel_centres_in_place(tmp_path):
    root = _volume_folder(tmp_path, n=1)
    src = FolderSource(root, resize=(3, 4, 5))
    ds = src.take()
    assert ds.x.shape == (2, 1, 3, 4, 5) and ds.masks.shape == (2, 3, 4, 5)
    native = FolderSource(root).affine(0)
    # the centre of the volume is the same world point before and after
    centre_old = _world(native, np.array([[2.5, 3.5, 4.5]]))
    centre_new = _world(ds.affines[0], np.array([[1.0, 1.5, 2.0]]))
    assert np.allclose(centre_old, centre_new)
    with pytest.raises(DataError, match=r"is a volume; resizing it needs D,H,W, got 4,5"):
        FolderSource(root, resize=(4, 5))


def test_a_mask_of_the_wrong_shape_is_one_sentence(tmp_path):
    root = _volume_folder(tmp_path, n=1)
    write_nifti(root / "masks" / "b" / "b0.nii.gz", np.zeros((9, 8, 6), np.uint8), np.eye(4))
    src = FolderSource(root)
    with pytest.raises(DataError, match=r"The mask .*b0.nii.gz is 9x8x6 but its image is 10x8x6\."):
        src.take()


def test_a_2d_file_in_a_folder_of_volumes_is_one_sentence(tmp_path):
    from PIL import Image

    root = _volume_folder(tmp_path, n=1, masks=False)
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "b" / "flat.png")
    with pytest.raises(DataError, match=r"flat.png is a 2D image but .* is a volume; a folder holds either"):
        FolderSource(root).take()
    write_nifti(tmp_path / "flat.nii.gz", np.zeros((8, 10), np.float32), np.eye(4))
    with pytest.raises(DataError, match=r"holds a 2D image of shape \[8, 10\], not a volume"):
        volumes.read_volume(tmp_path / "flat.nii.gz", LIMIT)


def test_volume_masks_are_binary_and_voxel_limits_hold(tmp_path):
    m = np.zeros((4, 5, 6), np.float32)
    m[1, 2, 3] = 0.5
    m[0, 0, 0] = 1.0
    write_nifti(tmp_path / "m.nii.gz", m, np.eye(4))
    with pytest.raises(DataError, match="is not binary"):
        read_mask(tmp_path / "m.nii.gz")
    with pytest.raises(DataError, match=r"has 120 voxels, more than the limit of 100"):
        read_image(tmp_path / "m.nii.gz", max_pixels=100)


def test_damaged_nifti_is_one_sentence(tmp_path):
    path = write_nifti(tmp_path / "v.nii", np.ones((8, 8, 8), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match=r"v.nii (cannot be read|is not a readable NIfTI)"):
        volumes.read_volume(path, LIMIT)

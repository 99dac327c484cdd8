"""NIfTI through nibabel: 3D volumes, 4D cines with a chosen frame, and the writer."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.io.common import affine_xyz_to_zyx, affine_zyx_to_xyz, atomic_path, existing, pick_frame


def read_nifti(path: str | Path, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a NIfTI file into a (Z, Y, X) array, its (z, y, x) RAS affine and metadata.

    A 4D file (X, Y, Z, T) needs ``frame``; without one the error names the frame count.
    """
    p = existing(path)
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise CmrError(
            f"{p} could not be read as NIfTI ({exc.__class__.__name__}: {exc}); "
            "the file may be truncated or corrupt: export or copy it again."
        ) from exc
    meta: dict = {"format": "nifti", "path": str(p)}
    data = np.squeeze(data, axis=tuple(range(4, data.ndim))) if data.ndim > 4 else data
    if data.ndim == 4:
        n = data.shape[3]
        k = pick_frame(p, n, frame)
        data = data[..., k]
        if n > 1:
            meta.update(frame=k, n_frames=int(n))
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise CmrError(f"{p} has {data.ndim} dimensions; cmrstudio reads 2D, 3D or 4D (cine) NIfTI files.")
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    return arr, affine_xyz_to_zyx(img.affine), meta


def write_nifti(path: str | Path, array: np.ndarray, affine_zyx: np.ndarray | None, dtype=None) -> Path:
    """Write a (Z, Y, X) array atomically as NIfTI with the given (z, y, x) affine."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    aff = np.eye(4) if affine_zyx is None else affine_zyx_to_xyz(affine_zyx)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), aff)
    img.header.set_xyzt_units("mm", "sec")
    if arr.dtype == np.uint8:
        img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path

"""HDF5 image/label pairs (the ACDC layout of ``../shared/data/acdc``).

Each dataset's shape and type are checked before it is read (a dataset can declare any size
while holding almost nothing on disk); a ``spacing`` attribute is used only if it is three
plausible millimetre values.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.io.checks import IN_PLANE_MM, SLICE_MM, check_dtype, check_shape, finite_image, note
from cmrstudio.io.common import existing

IMAGE_KEYS = ("image", "img", "data")
LABEL_KEYS = ("label", "labels", "mask", "seg", "gt")


def _dataset(fh: h5py.File, p: Path, key: str, what: str) -> np.ndarray:
    """Check a dataset's declared shape and type, then read it as (Z, Y, X)."""
    ds = fh[key]
    if not isinstance(ds, h5py.Dataset):
        raise CmrError(f"'{key}' in {p} is a group, not a dataset; cmrstudio reads an '{key}' dataset of {what} values.")
    shape = tuple(int(s) for s in (ds.shape or ()))
    if len(shape) not in (2, 3):
        raise CmrError(f"The {what} in {p} has {len(shape)} dimension{'s' if len(shape) != 1 else ''} "
                       f"({'×'.join(map(str, shape)) or 'a single value'}); a 2D slice or 3D volume (slices, rows, columns) is needed.")
    check_shape(p, shape, what)
    try:
        dtype = ds.dtype
    except (TypeError, ValueError):
        raise CmrError(f"The {what} in {p} has a data type cmrstudio cannot read; store it as numbers.") from None
    if h5py.check_string_dtype(dtype) or h5py.check_vlen_dtype(dtype):
        raise CmrError(f"The {what} in {p} holds text or variable-length values, not numbers; store it as numbers.")
    check_dtype(f"The {what} dataset '{key}' in {p}", dtype, what)
    arr = ds[()]
    return arr[None] if arr.ndim == 2 else arr


def _spacing(p: Path, value, meta: dict):
    """A ``spacing`` attribute as (z, y, x) mm, or None (with a warning) when it is not three plausible values."""
    try:
        vals = [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        vals = []
    lo, hi = IN_PLANE_MM
    zlo, zhi = SLICE_MM
    if len(vals) == 3 and all(math.isfinite(v) for v in vals) and zlo <= vals[0] <= zhi and lo <= vals[1] <= hi and lo <= vals[2] <= hi:
        return vals
    note(meta, f"{p} has a 'spacing' attribute that is not three plausible voxel sizes in mm (z, y, x): {value!r:.80}; "
               "it is ignored and spacing is treated as unknown: give --spacing z,y,x (mm) if you know it.")
    return None


def read_hdf5(path: str | Path, meta: dict | None = None) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """Read (image, label, attrs) from an HDF5 file; arrays are (Z, Y, X).

    These files carry no geometry: spacing stays unknown unless a ``spacing`` attribute (z, y, x in
    mm) is present and plausible. NaN or infinite image values are replaced (a warning, noted in
    ``meta["assumptions"]``).
    """
    p = existing(path)
    meta = {} if meta is None else meta
    if p.is_dir():
        raise CmrError(f"{p} is a folder, not an HDF5 file; give the .h5 file inside it.")
    try:
        with h5py.File(p, "r") as fh:
            keys = list(fh.keys())
            ik = next((k for k in IMAGE_KEYS if k in fh), None)
            lk = next((k for k in LABEL_KEYS if k in fh), None)
            if ik is None and lk is None:
                raise CmrError(
                    f"{p} has no 'image' or 'label' dataset (it has: {', '.join(keys) or 'nothing'}); "
                    "cmrstudio reads HDF5 files with an 'image' and/or 'label' dataset."
                )
            image = _dataset(fh, p, ik, "image") if ik else None
            label = _dataset(fh, p, lk, "label") if lk else None
            attrs = {}
            for k in list(fh.attrs):
                try:
                    v = fh.attrs[k]
                    attrs[k] = v.tolist() if hasattr(v, "tolist") else v
                except (OSError, TypeError, ValueError, KeyError):
                    continue  # an attribute that cannot be read is not needed
    except CmrError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CmrError(f"{p} could not be read as HDF5 ({why}); the file may be truncated or corrupt: copy it again.") from None
    if image is not None and label is not None and image.shape != label.shape:
        raise CmrError(f"The image in {p} is {'×'.join(map(str, image.shape))} but its label is {'×'.join(map(str, label.shape))}; "
                       "they must have the same shape.")
    if image is not None:
        image = finite_image(p, image, meta)
        image = np.asarray(image, dtype=np.float32)
    if "spacing" in attrs:
        sp = _spacing(p, attrs["spacing"], meta)
        if sp is None:
            del attrs["spacing"]
        else:
            attrs["spacing"] = sp
    return image, label, attrs

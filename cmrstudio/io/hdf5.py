"""HDF5 image/label pairs (the ACDC layout of ``../shared/data/acdc``)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.io.common import existing

IMAGE_KEYS = ("image", "img", "data")
LABEL_KEYS = ("label", "labels", "mask", "seg", "gt")


def read_hdf5(path: str | Path) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """Read (image, label, attrs) from an HDF5 file; arrays are (Z, Y, X).

    These files carry no geometry: spacing stays unknown unless an ``spacing``
    attribute (z, y, x in mm) is present.
    """
    p = existing(path)
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
            image = np.asarray(fh[ik], dtype=np.float32) if ik else None
            label = np.asarray(fh[lk]) if lk else None
            attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in fh.attrs.items()}
    except OSError as exc:
        raise CmrError(f"{p} could not be read as HDF5 ({exc}); the file may be truncated or corrupt.") from exc
    for name, arr in (("image", image), ("label", label)):
        if arr is not None and arr.ndim == 2:
            arr = arr[None]
        if arr is not None and arr.ndim != 3:
            raise CmrError(f"The {name} in {p} has {arr.ndim} dimensions; a 3D volume (slices, rows, columns) is needed.")
    if image is not None and image.ndim == 2:
        image = image[None]
    if label is not None and label.ndim == 2:
        label = label[None]
    return image, label, attrs

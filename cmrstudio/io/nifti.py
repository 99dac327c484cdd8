"""NIfTI through nibabel: 3D volumes, 4D cines with a chosen frame, and the writer.

Before any voxel is read, the header is checked (:mod:`cmrstudio.io.checks`): dimensions, the
voxel count of the volume to be held, the pixel type, and that the file holds all the bytes it
declares (a ``.nii.gz`` is decompressed once to its end, so a file cut short is refused and one
whose gzip trailer is missing is read with a warning). The geometry comes from the raw header
(sform, else qform, else pixdim, as the NIfTI standard orders them), not from nibabel's repaired
copy, which would read a pixdim of 0 as 1 mm without a word: an unusable one leaves the spacing
unknown, with a warning.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from cmrstudio.errors import CmrError
from cmrstudio.io.checks import check_dtype, check_shape, gzip_check, note, sane_affine
from cmrstudio.io.common import affine_xyz_to_zyx, affine_zyx_to_xyz, atomic_path, existing, orthonormal_affine, pick_frame

_READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, TypeError, struct.error, HeaderDataError,
                nib.filebasedimages.ImageFileError, MemoryError, IndexError)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=1)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_nibabel():
    """nibabel logs the repairs it makes to a header (``sizeof_hdr should be 348; set sizeof_hdr to 348``) straight
    to stderr; they are collected here instead (the reader says what was assumed, as a warning)."""
    logger = nib.imageglobals.logger
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    collect = _Collect()
    for h in handlers:
        logger.removeHandler(h)
    logger.addHandler(collect)
    logger.setLevel(1)
    logger.propagate = False
    try:
        yield collect.messages
    finally:
        logger.removeHandler(collect)
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(" - could the file be damaged?", "")[:160]


def _raw_header(p: Path, klass):
    """The header as written, unrepaired (nibabel's loaded copy has zero pixdims set to 1)."""
    import gzip

    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rb") as fh:
        block = fh.read(540)
    return klass.from_fileobj(io.BytesIO(block), check=False)


def _geometry(p: Path, raw, shape_zyx: tuple[int, ...], meta: dict) -> np.ndarray | None:
    """sform, else qform, else pixdim (the standard's order), each used only if it is sane."""
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    forms = []
    if int(raw["sform_code"]) > 0:
        forms.append("sform")
    if int(raw["qform_code"]) > 0:
        forms.append("qform")
    if not forms:
        forms.append("pixdim")
    unusable: list[str] = []
    units = int(raw["xyzt_units"]) & 7
    unit = {1: 1000.0, 3: 0.001}.get(units, 1.0)  # NIFTI_UNITS_METER, _MICRON; unknown (0) is taken as mm
    if unit != 1.0:
        meta["spatial_units"] = "m" if units == 1 else "um"
    for i, name in enumerate(forms):
        label = "pixdim (it has no qform or sform)" if name == "pixdim" else name
        hdr, flipped = raw, False
        if name != "sform" and np.any(pixdim < 0):  # nibabel refuses these; their magnitudes are what was meant
            hdr = raw.copy()
            hdr["pixdim"][1:4] = np.abs(pixdim)
            flipped = True
        try:
            with np.errstate(all="ignore"):
                form = hdr.get_sform() if name == "sform" else hdr.get_qform() if name == "qform" else hdr.get_base_affine()
                aff = affine_xyz_to_zyx(np.asarray(form, dtype=np.float64))
                if unit != 1.0:
                    aff[:3, :] *= unit
        except Exception:  # nibabel cannot form it (a quaternion out of range, ...)
            unusable.append(name)
            continue
        if i < len(forms) - 1 and sane_affine(p, aff, shape_zyx, None, label, quiet=True) is None:
            unusable.append(name)  # a later transform may do: say which was used once one is
            continue
        good = sane_affine(p, aff, shape_zyx, meta, label)
        if good is not None and unusable:
            note(meta, f"{p} has an unusable {' and '.join(unusable)}; its {name} was used instead.")
        if good is not None and flipped:
            note(meta, f"{p} gives negative voxel sizes in its pixdim ({', '.join(f'{v:g}' for v in pixdim)}); "
                       "their magnitudes were used.")
        return good
    note(meta, f"{p} has no usable geometry (its {' and '.join(unusable)} cannot be formed); "
               "spacing is treated as unknown: give --spacing z,y,x (mm) if you know it.")
    return None


def read_nifti(path: str | Path, frame: int | None = None, kind: str = "image") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a NIfTI file into a (Z, Y, X) array, its (z, y, x) RAS affine (None when the file has no
    usable geometry) and metadata (``assumptions``: what was assumed, each also a warning).

    A 4D file (X, Y, Z, T) needs ``frame``; without one the error names the frame count.
    """
    p = existing(path)
    meta: dict = {"format": "nifti", "path": str(p)}
    advice = "the file may be truncated or corrupt: export or copy it again."
    if p.is_dir():
        raise CmrError(f"{p} is a folder, not a NIfTI file; give the .nii or .nii.gz file inside it.")
    try:
        with _quiet_nibabel() as repaired:
            img = nib.load(str(p))
            raw = _raw_header(p, type(img.header))
            shape = tuple(int(s) for s in img.header.get_data_shape())
            dtype = img.header.get_data_dtype()
    except _READ_ERRORS as exc:
        raise CmrError(f"{p} could not be read as NIfTI ({_why(exc)}); {advice}") from None
    repaired = [m for m in dict.fromkeys(repaired) if "pixdim[1,2,3]" not in m]  # voxel sizes: said by _geometry
    if repaired:
        note(meta, f"{p} has header fields that had to be repaired to read it ({'; '.join(repaired)}); "
                   "it was read with those repairs: check it, or export it again.")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CmrError(f"{p} is not a NIfTI file (nibabel reads it as {type(img).__name__}); give a .nii or .nii.gz image.")

    # -- limits from the header, before any voxel is read
    check_dtype(p, dtype, kind)
    if not shape:
        raise CmrError(f"{p} declares no dimensions (dim[0] is 0); its header is damaged: export or copy the file again.")
    check_shape(p, shape, "array")  # every declared axis, each frame included
    if len(shape) == 1:
        raise CmrError(f"{p} holds a 1D signal of {shape[0]} values, not an image; give a 2D, 3D or 4D (cine) NIfTI file.")
    if len(shape) > 4 and any(s != 1 for s in shape[4:]):
        raise CmrError(f"{p} has {len(shape)} dimensions ({'×'.join(map(str, shape))}); cmrstudio reads 2D, 3D or 4D "
                       "(cine) NIfTI files: give one volume or one cine.")
    vol = shape[:3] if len(shape) >= 3 else shape + (1,)
    check_shape(p, vol[::-1], kind)
    n_frames = shape[3] if len(shape) >= 4 else 1
    k = pick_frame(p, n_frames, frame) if len(shape) >= 4 else None
    vox_offset = float(raw["vox_offset"])
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise CmrError(f"{p} has a damaged header (its data offset is {vox_offset:g}); export or copy it again.")
    needed = int(vox_offset) + math.prod(shape) * dtype.itemsize
    if p.name.lower().endswith(".gz"):
        gzip_check(p, needed, meta=meta)
    else:
        size = os.stat(p).st_size
        if size < needed:
            raise CmrError(f"{p} is truncated: it is {size:,} bytes long but its header declares {needed:,}; export or copy it again.")

    # -- the voxels of the one volume asked for
    try:
        with _quiet_nibabel(), np.errstate(all="ignore"):
            if k is None:
                data = np.asanyarray(img.dataobj)
            else:
                data = np.asanyarray(img.dataobj[(slice(None),) * 3 + (k,) + (0,) * (len(shape) - 4)])
    except _READ_ERRORS as exc:
        raise CmrError(f"{p} could not be read as NIfTI ({_why(exc)}); {advice}") from None
    if k is not None and n_frames > 1:
        meta.update(frame=k, n_frames=int(n_frames))
    data = data.reshape(vol)
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    check_dtype(p, arr.dtype, kind)  # after scaling (scl_slope) too
    affine = _geometry(p, raw, arr.shape, meta)
    return arr, affine, meta


def write_nifti(path: str | Path, array: np.ndarray, affine_zyx: np.ndarray | None, dtype=None, *, orthonormal: bool = False,
                descrip: str | None = None) -> Path:
    """Write a (Z, Y, X) array atomically as NIfTI with the given (z, y, x) affine.

    Both transforms are set, with code 1 (scanner-based coordinates): the sform holds the affine as given
    (``orthonormal``: its direction made orthonormal first, :func:`~cmrstudio.io.common.orthonormal_affine`),
    the qform its nearest rigid version, which is all a qform can hold. ITK-based readers (SimpleITK,
    ITK-SNAP, nnU-Net) use the qform when the sform's direction is not orthonormal, so a scan whose matrix
    is a hair off (M&Ms-style, ~1e-4) still opens everywhere. Without an affine (spacing unknown) both codes
    are 0 (NIFTI_XFORM_UNKNOWN: arbitrary coordinates), the voxel size a 1 mm placeholder and the spatial
    unit unknown, so no reader is told a geometry the data never had. ``descrip`` (at most 79 ASCII
    characters) goes into the header's description field.
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), None)
    hdr = img.header
    if affine_zyx is None:
        hdr.set_qform(None, code=0)
        hdr.set_sform(None, code=0)
        hdr.set_zooms((1.0,) * 3)
        hdr.set_xyzt_units("unknown", "unknown")
    else:
        if orthonormal:
            affine_zyx, _ = orthonormal_affine(affine_zyx)
        aff = affine_zyx_to_xyz(affine_zyx)
        hdr.set_qform(aff, code=1)
        hdr.set_sform(aff, code=1)
        hdr.set_xyzt_units("mm", "sec")
    if descrip:
        hdr["descrip"] = re.sub(r"[^\x20-\x7e]", "?", str(descrip))[:79].encode("ascii")
    if arr.dtype == np.uint8:
        hdr["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path

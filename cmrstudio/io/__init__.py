"""Readers and writers. Every reader returns one canonical :class:`~cmrstudio.case.Case`.

``read_case(path)`` takes a file (NIfTI, MHA/NRRD, DICOM, HDF5) or a folder
(a dataset layout or a DICOM series); ``scan(path)`` lists the cases of a folder.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cmrstudio import __version__
from cmrstudio.anatomy import remap
from cmrstudio.case import Case
from cmrstudio.errors import CmrError
from cmrstudio.io.checks import finite_image
from cmrstudio.io.common import (
    DICOM_SUFFIXES,
    HDF5_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    existing,
    has_suffix,
    is_dicom_file,
    jsonable,
    stem,
    write_text_atomic,
)
from cmrstudio.io.folder import CaseRef, scan_folder
from cmrstudio.io.hdf5 import read_hdf5
from cmrstudio.io.nifti import read_nifti, write_nifti
from cmrstudio.io.sitk_io import read_dicom, read_sitk
from cmrstudio.io import sunnybrook

__all__ = ["CaseRef", "read_case", "read_cases", "read_volume", "scan", "write_case", "load_ref"]

_MASK_NAME = re.compile(r"(_gt|_mask|_seg|_label|_labels)$", re.I)


def _plainly(fn):
    """Errors from the system while reading (a folder that cannot be listed, a file that vanished, memory
    running out) become one sentence too."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        try:
            return fn(*args, **kw)
        except CmrError:
            raise
        except MemoryError:
            where = args[0] if args else kw.get("path", "the input")
            raise CmrError(f"Reading {where} ran out of memory; close other programs, or crop the scan to the heart.") from None
        except OSError as exc:
            where = exc.filename or (args[0] if args else kw.get("path", "the input"))
            raise CmrError(f"{where} cannot be read ({exc.strerror or exc}); check that it exists and that you may read it.") from None

    return wrapper


@_plainly
def read_volume(path: str | Path, frame: int | None = None, series: str | None = None,
                kind: str = "image") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read one image file or DICOM folder: (array Z×Y×X, affine or None, metadata).

    ``kind`` is ``"image"`` (NaN and infinite values are replaced, with a warning) or ``"mask"``
    (values are left for the label checks, which refuse them). What was assumed is listed in
    ``metadata["assumptions"]``.
    """
    p = existing(path)
    if p.is_dir():
        arr, aff, meta = read_dicom(p, frame=frame, series=series)
    elif has_suffix(p, NIFTI_SUFFIXES):
        arr, aff, meta = read_nifti(p, frame=frame, kind=kind)
    elif has_suffix(p, SITK_SUFFIXES):
        arr, aff, meta = read_sitk(p, frame=frame, kind=kind)
    elif has_suffix(p, HDF5_SUFFIXES):
        meta = {"format": "hdf5", "path": str(p)}
        image, label, attrs = read_hdf5(p, meta)
        first, second = (label, image) if kind == "mask" else (image, label)
        arr, aff = (first if first is not None else second), None
        meta.update({k: v for k, v in attrs.items() if k not in meta})
    elif has_suffix(p, DICOM_SUFFIXES) or is_dicom_file(p):
        arr, aff, meta = read_dicom(p, frame=frame, series=series)
    else:
        raise CmrError(
            f"{p} is not a format cmrstudio reads; use NIfTI (.nii/.nii.gz), DICOM, MHA/NRRD or HDF5 (.h5)."
        )
    if kind == "image":
        arr = finite_image(p, arr, meta)
    return arr, aff, meta


def _assumed(*metas: dict | None) -> dict[str, list[str]]:
    """The ``assumptions`` of several readers' metadata, joined (an empty dict when there are none)."""
    out = [a for m in metas if m for a in m.get("assumptions", [])]
    return {"assumptions": out} if out else {}


def is_dicom_series_folder(path: Path) -> bool:
    """A folder of DICOM files with no subfolders: one series (or cine), not a dataset."""
    entries = list(path.iterdir())
    return not any(e.is_dir() for e in entries) and any(is_dicom_file(e) for e in entries if e.is_file())


@_plainly
def read_cases(
    path: str | Path,
    case: str | None = None,
    frame: int | None = None,
    spacing: tuple[float, float, float] | None = None,
    **kw,
) -> list[Case]:
    """Every case of a dataset folder (or those matching ``case``), or the one case of a file.

    ``spacing`` is applied only to cases that store none; other keywords go to :func:`read_case`.
    """
    p = existing(path)
    if p.is_dir() and kw.get("mask") is None and not is_dicom_series_folder(p):
        refs = scan_folder(p)
        if case is not None:
            refs = select_refs(refs, case)
            if not refs:
                raise CmrError(f"{p} has no case {case!r}; `cmrstudio info {p}` lists the cases it holds.")
        return [_finish(r.load(frame=frame), spacing) for r in refs]
    return [read_case(p, case=case, frame=frame, spacing=spacing, **kw)]


def guess_convention(path: Path) -> str:
    name = path.name
    if re.match(r"^patient\d{3}_frame\d{2}", name, re.I):
        return "acdc"
    if re.match(r"^[A-Z0-9]{6}_sa_(ED|ES)", name, re.I):
        return "mnms"
    return "canonical"


def _mask_from_file(path: Path, convention: str | None, frame: int | None) -> tuple[np.ndarray, np.ndarray | None, str, dict]:
    if has_suffix(path, HDF5_SUFFIXES):
        meta: dict = {}
        _, label, _ = read_hdf5(path, meta)
        if label is None:
            raise CmrError(f"{path} has no 'label' dataset to use as a mask.")
        arr, aff = label, None
    else:
        arr, aff, meta = read_volume(path, frame=frame, kind="mask")
    conv = convention or guess_convention(path)
    return remap(arr, conv, where=f"The mask {path}"), aff, conv, meta


@_plainly
def read_case(
    path: str | Path,
    mask: str | Path | None = None,
    labels: str | None = None,
    frame: int | None = None,
    vendor: str | None = None,
    phase: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    case: str | None = None,
    series: str | None = None,
) -> Case:
    """Read one case from a file or folder into the canonical case.

    ``labels`` names the mask's convention (canonical, mnms, acdc); when omitted it is
    guessed from the dataset's file names and recorded in ``case.source``.
    ``spacing`` (z, y, x mm) is applied only when the file has none of its own.
    """
    p = existing(path)
    if p.is_dir():
        if is_dicom_series_folder(p) and mask is None:
            arr, aff, meta = read_dicom(p, frame=frame, series=series)
            c = Case(arr, None, aff, vendor or meta.get("vendor", "unknown"), phase, p.name, {**meta, "reader": "dicom"})
            return _finish(c, spacing)
        refs = scan_folder(p)
        if case is not None:
            sel = select_refs(refs, case)
            if phase is not None:
                sel = [r for r in sel if r.phase == phase]
            if not sel:
                raise CmrError(f"{p} has no case {case!r}; `cmrstudio info {p}` lists the {len(refs)} cases it holds.")
            refs = sel
        if len(refs) > 1:
            names = ", ".join(r.case_id for r in refs[:6]) + (" …" if len(refs) > 6 else "")
            raise CmrError(f"{p} holds {len(refs)} cases ({names}); choose one with --case.")
        c = load_ref(refs[0], frame=frame)
        if vendor:
            c.vendor = vendor
        return _finish(c, spacing)

    if has_suffix(p, HDF5_SUFFIXES) and mask is None:
        meta: dict = {}
        image, label, attrs = read_hdf5(p, meta)
        conv = labels or guess_convention(p)
        m = remap(label, conv, where=f"The label map in {p}") if label is not None else None
        src = {"path": str(p), "reader": "hdf5", "label_convention": conv, "format": "hdf5", **_assumed(meta)}
        c = Case(image, m, None, vendor or "unknown", phase, stem(p), src)
        if "spacing" in attrs and spacing is None:
            spacing = tuple(attrs["spacing"])
        return _finish(c, spacing)

    if mask is None and _MASK_NAME.search(stem(p)):
        return _mask_case(p, labels, frame, spacing, vendor, phase)

    arr, aff, meta = read_volume(p, frame=frame, series=series)
    src: dict[str, Any] = {**meta, "reader": meta.get("format")}
    m = None
    if mask is not None:
        mp = existing(mask, "mask file")
        m, _, conv, mmeta = _mask_from_file(mp, labels, frame)
        src.update(mask_path=str(mp), label_convention=conv, **_assumed(meta, mmeta))
    c = Case(arr, m, aff, vendor or meta.get("vendor", "unknown"), phase, stem(p), src)
    return _finish(c, spacing)


@_plainly
def read_mask(
    path: str | Path,
    labels: str | None = None,
    frame: int | None = None,
    spacing: tuple[float, float, float] | None = None,
    case: str | None = None,
) -> Case:
    """Read a label map as a mask-only case: a mask file in any format, or a dataset
    folder / HDF5 file holding labels (with ``case`` to choose one)."""
    p = existing(path)
    if p.is_dir() or has_suffix(p, HDF5_SUFFIXES):
        c = read_case(p, labels=labels, frame=frame, spacing=spacing, case=case)
        if c.mask is None:
            raise CmrError(f"{p} holds no label map to use as a mask.")
        return c
    return _mask_case(p, labels, frame, spacing)


def _mask_case(p: Path, labels, frame, spacing, vendor: str | None = None, phase: str | None = None) -> Case:
    m, aff, conv, meta = _mask_from_file(p, labels, frame)
    src = {"mask_path": str(p), "reader": "mask-only", "label_convention": conv, **_assumed(meta)}
    return _finish(Case(None, m, aff, vendor or "unknown", phase, stem(p), src), spacing)


VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def write_volume(path: str | Path, array: np.ndarray, affine_zyx: np.ndarray | None, dtype=None) -> Path:
    """Write a (Z, Y, X) array as NIfTI, MHA or NRRD (by suffix), atomically."""
    from cmrstudio.io.sitk_io import write_sitk

    p = Path(path)
    if not has_suffix(p, VOLUME_SUFFIXES):
        raise CmrError(f"{p} has no volume suffix cmrstudio writes; use .nii.gz, .nii, .mha or .nrrd.")
    if not p.parent.exists():
        raise CmrError(f"The folder {p.parent} does not exist; create it or choose another output path.")
    arr = np.asarray(array) if dtype is None else np.asarray(array).astype(dtype)
    if has_suffix(p, (".nii", ".nii.gz")):
        return write_nifti(p, arr, affine_zyx)
    return write_sitk(p, arr, affine_zyx)


def _finish(c: Case, spacing) -> Case:
    if spacing is not None and c.affine is None:
        return c.with_spacing(tuple(spacing))
    return c


@_plainly
def load_ref(ref: CaseRef, frame: int | None = None) -> Case:
    """Load a case found by :func:`scan`."""
    src: dict[str, Any] = {"dataset": ref.layout, "label_convention": ref.convention, **ref.summary()}
    if ref.layout == "sunnybrook":
        vols = sunnybrook.read_sunnybrook(Path(ref.extra["root"]), ref.extra["patient"])
        if ref.phase not in vols:
            raise CmrError(f"Sunnybrook patient {ref.extra['patient']} has no {ref.phase} phase with contours.")
        image, m, aff, meta = vols[ref.phase]
        return Case(image, m, aff, ref.vendor, ref.phase, ref.case_id, {**src, **meta, "reader": "sunnybrook"})
    if ref.layout == "acdc-hdf5":
        meta: dict = {}
        image, label, _ = read_hdf5(ref.image, meta)
        m = remap(label, "acdc", where=f"The label map in {ref.image}") if label is not None else None
        return Case(image, m, None, ref.vendor, ref.phase, ref.case_id,
                    {**src, "reader": "hdf5", "path": str(ref.image), **_assumed(meta)})
    if ref.layout == "dicom":
        arr, aff, meta = read_dicom(ref.image, frame=frame)
        arr = finite_image(ref.image, arr, meta)
        return Case(arr, None, aff, meta.get("vendor", "unknown"), None, ref.case_id, {**src, **meta, "reader": "dicom"})
    image = aff = None
    meta = {}
    mmeta: dict = {}
    if ref.image is not None:
        image, aff, meta = read_volume(ref.image, frame=frame)
    m = None
    if ref.mask is not None:
        raw, maff, mmeta = read_volume(ref.mask, frame=frame, kind="mask")
        mapping = ref.extra.get("mapping")
        if mapping:
            m = _apply_mapping(raw, mapping, ref.mask)
        else:
            m = remap(raw, ref.convention, where=f"The mask {ref.mask}")
        if aff is None and ref.image is None:
            aff = maff
    side = ref.extra.get("meta") or {}
    if side.get("spacing_mm") == "unknown":
        aff = None  # the NIfTI holds a placeholder affine; the spacing was never known
    if side.get("source"):
        src["origin"] = side["source"]
    if side.get("frame"):
        src["frame"] = side["frame"]
    return Case(image, m, aff, ref.vendor, ref.phase, ref.case_id, {**src, **meta, "reader": ref.layout, **_assumed(meta, mmeta)})


def _apply_mapping(raw: np.ndarray, mapping: dict[int, int], where: Path) -> np.ndarray:
    """Map a label map's values through dataset.json's labels (value -> canonical), refusing values it does not name."""
    arr = np.asarray(raw)
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise CmrError(f"The mask {where} holds non-integer values; a label map must hold whole numbers.")
    if arr.dtype.kind not in "biuf":
        raise CmrError(f"The mask {where} holds values of type {arr.dtype}, not label numbers.")
    values = np.unique(arr)
    unknown = [v for v in values.tolist() if int(v) not in mapping]
    if unknown:
        raise CmrError(f"The mask {where} holds label value {int(unknown[0])}, which dataset.json does not name; "
                       "fix the mask or dataset.json.")
    keys = np.array(sorted(mapping), dtype=np.int64)
    vals = np.array([mapping[k] for k in keys], dtype=np.uint8)
    return vals[np.searchsorted(keys, arr.astype(np.int64))]


def select_refs(refs: list[CaseRef], case: str) -> list[CaseRef]:
    """Cases whose id is ``case``; failing an exact match, those whose id starts with it."""
    exact = [r for r in refs if r.case_id == case]
    return exact or [r for r in refs if r.case_id.startswith(case)]


@_plainly
def scan(path: str | Path) -> list[CaseRef]:
    return scan_folder(path)


def write_case(case: Case, out_dir: str | Path, name: str | None = None, image_dtype=np.float32) -> dict[str, Path]:
    """Write a case in the cmrstudio layout: ``<name>_image.nii.gz``, ``<name>_mask.nii.gz``, ``<name>.json``.

    Each file is written to a temporary name and renamed, so an interrupted write never
    leaves a half-written file under the final name. The JSON sidecar comes last.
    """
    out = Path(out_dir)
    name = name or case.case_id
    paths: dict[str, Path] = {}
    if case.image is not None:
        img = case.image
        if np.dtype(image_dtype).kind in "iu":
            info = np.iinfo(image_dtype)
            if not np.array_equal(img, np.round(img)) or img.min() < info.min or img.max() > info.max:
                raise CmrError(
                    f"The image of {case.case_id} holds values that {np.dtype(image_dtype).name} cannot store exactly "
                    f"(range {img.min():g}–{img.max():g}, whole numbers: {bool(np.array_equal(img, np.round(img)))}); "
                    "write it as float32 (drop --int16)."
                )
        paths["image"] = write_nifti(out / f"{name}_image.nii.gz", img, case.affine, dtype=image_dtype)
    if case.mask is not None:
        paths["mask"] = write_nifti(out / f"{name}_mask.nii.gz", case.mask, case.affine, dtype=np.uint8)
    sidecar = {
        "case_id": name,
        "vendor": case.vendor,
        "phase": case.phase,
        "label_convention_written": "canonical",
        "labels": {"0": "background", "1": "LV blood pool", "2": "LV myocardium", "3": "RV blood pool"},
        "spacing_mm": list(case.spacing) if case.spacing else "unknown",
        "source": jsonable(case.source),
        "written_by": f"cmrstudio {__version__}",
    }
    paths["json"] = write_text_atomic(out / f"{name}.json", json.dumps(sidecar, indent=2))
    return paths


def sample_case(phase: str = "ED"):
    """The built-in real case (Sunnybrook SCD0000101, CC0) in canonical labels."""
    from cmrstudio.resources import sample_dir

    d = sample_dir()
    if not d.is_dir():
        raise CmrError(f"The sample case folder {d} is missing; reinstall cmrstudio from its repository.")
    refs = [r for r in scan(d) if r.phase == phase]
    if not refs:
        raise CmrError(f"The sample case folder {d} has no {phase} volume; reinstall cmrstudio from its repository.")
    return refs[0].load()

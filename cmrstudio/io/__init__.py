"""Readers and writers. Every reader returns one canonical :class:`~cmrstudio.case.Case`.

``read_case(path)`` takes a file (NIfTI, MHA/NRRD, DICOM, HDF5) or a folder
(a dataset layout or a DICOM series); ``scan(path)`` lists the cases of a folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cmrstudio import __version__
from cmrstudio.anatomy import remap
from cmrstudio.case import Case
from cmrstudio.errors import CmrError
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


def read_volume(path: str | Path, frame: int | None = None, series: str | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read one image file or DICOM folder: (array Z×Y×X, affine or None, metadata)."""
    p = existing(path)
    if p.is_dir():
        return read_dicom(p, frame=frame, series=series)
    if has_suffix(p, NIFTI_SUFFIXES):
        return read_nifti(p, frame=frame)
    if has_suffix(p, SITK_SUFFIXES):
        return read_sitk(p, frame=frame)
    if has_suffix(p, HDF5_SUFFIXES):
        image, label, attrs = read_hdf5(p)
        arr = image if image is not None else label
        return arr, None, {"format": "hdf5", "path": str(p), **attrs}
    if has_suffix(p, DICOM_SUFFIXES) or is_dicom_file(p):
        return read_dicom(p, frame=frame, series=series)
    raise CmrError(
        f"{p} is not a format cmrstudio reads; use NIfTI (.nii/.nii.gz), DICOM, MHA/NRRD or HDF5 (.h5)."
    )


def is_dicom_series_folder(path: Path) -> bool:
    """A folder of DICOM files with no subfolders: one series (or cine), not a dataset."""
    entries = list(path.iterdir())
    return not any(e.is_dir() for e in entries) and any(is_dicom_file(e) for e in entries if e.is_file())


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


def _mask_from_file(path: Path, convention: str | None, frame: int | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    if has_suffix(path, HDF5_SUFFIXES):
        _, label, _ = read_hdf5(path)
        if label is None:
            raise CmrError(f"{path} has no 'label' dataset to use as a mask.")
        arr, aff = label, None
    else:
        arr, aff, _ = read_volume(path, frame=frame)
    conv = convention or guess_convention(path)
    return remap(arr, conv, where=f"The mask {path}"), aff, conv


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
        image, label, attrs = read_hdf5(p)
        conv = labels or guess_convention(p)
        m = remap(label, conv, where=f"The label map in {p}") if label is not None else None
        src = {"path": str(p), "reader": "hdf5", "label_convention": conv, "format": "hdf5"}
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
        m, _, conv = _mask_from_file(mp, labels, frame)
        src.update(mask_path=str(mp), label_convention=conv)
    c = Case(arr, m, aff, vendor or meta.get("vendor", "unknown"), phase, stem(p), src)
    return _finish(c, spacing)


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
    m, aff, conv = _mask_from_file(p, labels, frame)
    src = {"mask_path": str(p), "reader": "mask-only", "label_convention": conv}
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
        image, label, _ = read_hdf5(ref.image)
        m = remap(label, "acdc", where=f"The label map in {ref.image}") if label is not None else None
        return Case(image, m, None, ref.vendor, ref.phase, ref.case_id, {**src, "reader": "hdf5", "path": str(ref.image)})
    if ref.layout == "dicom":
        arr, aff, meta = read_dicom(ref.image, frame=frame)
        return Case(arr, None, aff, meta.get("vendor", "unknown"), None, ref.case_id, {**src, **meta, "reader": "dicom"})
    image = aff = None
    meta: dict[str, Any] = {}
    if ref.image is not None:
        image, aff, meta = read_volume(ref.image, frame=frame)
    m = None
    if ref.mask is not None:
        raw, maff, _ = read_volume(ref.mask, frame=frame)
        mapping = ref.extra.get("mapping")
        if mapping:
            lut = np.zeros(max(int(raw.max()), max(mapping)) + 1, dtype=np.uint8)
            unknown = sorted(set(np.unique(raw).astype(int)) - set(mapping))
            if unknown:
                raise CmrError(f"The mask {ref.mask} holds label value {unknown[0]}, which dataset.json does not name; fix the mask or dataset.json.")
            for k, v in mapping.items():
                lut[k] = v
            m = lut[raw.astype(np.int64)]
        else:
            m = remap(raw, ref.convention, where=f"The mask {ref.mask}")
        if aff is None:
            aff = maff
    side = ref.extra.get("meta") or {}
    if side.get("spacing_mm") == "unknown":
        aff = None  # the NIfTI holds a placeholder affine; the spacing was never known
    if side.get("source"):
        src["origin"] = side["source"]
    if side.get("frame"):
        src["frame"] = side["frame"]
    return Case(image, m, aff, ref.vendor, ref.phase, ref.case_id, {**src, **meta, "reader": ref.layout})


def select_refs(refs: list[CaseRef], case: str) -> list[CaseRef]:
    """Cases whose id is ``case``; failing an exact match, those whose id starts with it."""
    exact = [r for r in refs if r.case_id == case]
    return exact or [r for r in refs if r.case_id.startswith(case)]


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

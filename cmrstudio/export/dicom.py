"""Rendered cases as DICOM: the image and its label map as two MR series, marked the way DICOM marks synthetic data.

Every file is a classic MR Image Storage object (one slice per file, Explicit VR Little Endian,
with preamble and file meta information): the only image IOD whose Image Plane module gives the
patient-space geometry that SimpleITK's series reader, dcm2niix and every PACS viewer use for
per-slice files (Secondary Capture carries no geometry; Enhanced MR needs acquisition attributes
a rendered image cannot truthfully fill). What is synthetic is said the standard's way:

- **Synthetic Data (0008,001C)** — "whether some or all of the content was made artificially
  rather than being a faithful representation of acquired data" (PS3.3 SOP Common): ``YES`` for
  every rendered image (a render in a patient's own scan is partly made by the model, so it is
  ``YES`` too), ``YES`` for a painted mask, ``NO`` for a mask that is the patient's own
  segmentation, and absent (it is Type 3) when the mask's origin is not recorded;
- **Contributing Equipment Sequence (0018,A001)** naming cmrstudio and the model with the purpose
  (109100, DCM, "Synthesizing Equipment") on every series whose content it made;
- ImageType ``DERIVED\\SECONDARY\\OTHER``; SeriesDescription starting with ``SYNTHETIC`` (made by the
  model or painted) or ``DERIVED`` (rendered in a patient's scan, or the patient's segmentation);
  DerivationDescription naming the model, its sha256, the sampler, steps, guidance, seed and
  vendor style, and whether the content is derived from a patient;
- a made-up patient (``SYNTHETIC^CMRSTUDIO``, ``SYN-<hash>``), PatientIdentityRemoved ``YES``,
  no birth date, sex or age values, no institution, Manufacturer ``cmrstudio (synthetic)``,
  PatientPosition ``HFS`` (a conventional value: positions are in patient coordinates anyway);
- brand new UIDs (study, series, instances, frame of reference) and a StudyID for every export:
  nothing is copied from a real source, and no private tags are written.

The image is stored as uint16 with Rescale Slope/Intercept (its float intensities; not part of the
MR Image IOD, so dciodvfy warns, but every reader applies them, as for Philips MR); the mask as
uint16 labels 0–3 with no rescale.

Geometry follows the case's ``affine`` ((z, y, x) RAS, converted to DICOM's LPS with
:func:`~cmrstudio.io.common.affine_to_sitk_geometry`): SimpleITK reads each series back
with the origin, spacing and direction of the NIfTI written from the same case, and
``GetArrayFromImage`` gives the case's (Z, Y, X) array. Without an affine the spacing is
unknown: the files get an identity geometry with 1 mm placeholders and ImageComments says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from cmrstudio.case import Case
from cmrstudio.errors import CmrError
from cmrstudio.io.common import affine_to_sitk_geometry, atomic_path

__all__ = ["write_dicom", "MR_IMAGE_STORAGE", "MASK_DESCRIPTION"]

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
MASK_DESCRIPTION = "SYNTHETIC mask: 0 bg 1 LV 2 MYO 3 RV"
PATIENT_MASK_DESCRIPTION = "DERIVED mask, patient segmentation: 0 bg 1 LV 2 MYO 3 RV"
UNKNOWN_MASK_DESCRIPTION = "MASK of unrecorded origin: 0 bg 1 LV 2 MYO 3 RV"
IMAGE_TYPE = ["DERIVED", "SECONDARY", "OTHER"]  # MR Images need value 3; OTHER is its defined term for none of the maps
PATIENT_POSITION = "HFS"
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")
PATIENT_NAME = "SYNTHETIC^CMRSTUDIO"
MANUFACTURER = "cmrstudio (synthetic)"
QUANTISATIONS = ("auto", "uint16")
UNKNOWN_SPACING_COMMENT = (
    "The pixel spacing of this synthetic case is unknown (its source stored no geometry); "
    "the 1 mm spacing and identity orientation here are placeholders, not measurements."
)
_LEVELS = 65535  # uint16 steps
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
_SAVE_HAS_ENFORCE = "enforce_file_format" in inspect.signature(Dataset.save_as).parameters


# ----------------------------------------------------------------------------- text and numbers
def _ascii(text: Any, limit: int, *, backslash: bool = False) -> str:
    """Printable ASCII only (the default character repertoire), trimmed to ``limit`` chars.
    LO/SH/CS values may not hold a backslash (the value delimiter); ST/LT may."""
    s = str(text)
    s = re.sub(r"[^\x20-\x7e]", "?", s)
    if not backslash:
        s = s.replace("\\", "/")
    return s.strip()[:limit].rstrip()


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, as the DS value representation requires."""
    return format_number_as_ds(float(value))


def _ds_value(value: float) -> float:
    """The float a reader will parse from the DS we write for ``value``."""
    return float(_ds(value))


def _patient_id(study_uid: str) -> str:
    """A made-up patient id, derived from the new study UID: nothing of a source scan's name (which may hold a patient id)."""
    import hashlib

    return "SYN-" + hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:12].upper()


def _study_id(study_uid: str) -> str:
    """A StudyID (SH, 16 characters) made from the new study UID."""
    import hashlib

    return "CMR" + hashlib.sha256(study_uid.encode("ascii")).hexdigest()[:8].upper()


def _label(value: Any) -> str:
    return _ascii(value, 64) if value not in (None, "") else ""


# ----------------------------------------------------------------------------- checks
def _check_case(case: Case) -> None:
    cid = case.case_id
    if case.image is None:
        raise CmrError(
            f"Case {cid!r} has no image, only a mask; render a synthetic image for it before exporting to DICOM."
        )
    bad = ~np.isfinite(case.image)
    if bad.any():
        n = int(bad.sum())
        raise CmrError(
            f"Case {cid!r} has {n} non-finite pixel value{'s' if n != 1 else ''} (NaN or infinity) in its image; "
            "render it again or fix the image before exporting to DICOM."
        )
    if case.mask is not None:
        labels = np.unique(case.mask)
        unknown = [int(v) for v in labels if v > 3]
        if unknown:
            raise CmrError(
                f"Case {cid!r} has label {', '.join(map(str, unknown))} in its mask, outside the canonical "
                "0 bg, 1 LV, 2 MYO, 3 RV; remap or clean the mask before exporting to DICOM."
            )
    z, y, x = case.shape
    if y > 65535 or x > 65535:
        raise CmrError(f"Case {cid!r} has slices of {y}×{x} pixels; DICOM allows at most 65535 rows and columns.")


def _check_folder(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise CmrError(f"{folder} is a file, not a folder; choose a new folder for the DICOM export.")
        if any(folder.iterdir()):
            raise CmrError(
                f"The folder {folder} is not empty; choose a new or empty folder (a DICOM export never overwrites files)."
            )


def _source_uids(case: Case) -> set[str]:
    """UID-like strings in the case's source record (a real study, series or instance)."""
    found: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)+", obj.strip()):
            found.add(obj.strip())

    walk(case.source)
    return found


# ----------------------------------------------------------------------------- geometry
def _geometry(case: Case) -> dict[str, Any]:
    """Orientation, per-slice positions (LPS mm) and spacings for the DICOM tags."""
    nz = case.shape[0]
    if case.affine is None:
        origin = np.zeros(3)
        spacing = np.ones(3)
        direction = np.eye(3)
    else:
        if not np.all(np.isfinite(case.affine)):
            raise CmrError(f"Case {case.case_id!r} has a non-finite affine; fix its geometry before exporting to DICOM.")
        o, s, d = affine_to_sitk_geometry(case.affine)
        origin = np.asarray(o, dtype=np.float64)
        spacing = np.asarray(s, dtype=np.float64)
        if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
            raise CmrError(
                f"Case {case.case_id!r} has an affine with a zero-length axis; fix its geometry before exporting to DICOM."
            )
        direction = np.asarray(d, dtype=np.float64).reshape(3, 3)
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    cos = float(np.dot(row_dir, col_dir))
    if abs(cos) > 1e-4:
        angle = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
        raise CmrError(
            f"Case {case.case_id!r} has rows and columns at {angle:.2f}° rather than 90° in its affine; "
            "resample it to an orthogonal grid before exporting to DICOM."
        )
    positions = [origin + k * spacing[2] * slice_dir for k in range(nz)]
    return {
        "orientation": [_ds(v) for v in (*row_dir, *col_dir)],
        "positions": [[_ds(v) for v in p] for p in positions],
        "pixel_spacing": [_ds(spacing[1]), _ds(spacing[0])],  # [row spacing (y), column spacing (x)]
        "slice_spacing": _ds(spacing[2]),
        "known": case.affine is not None,
    }


# ----------------------------------------------------------------------------- pixels
def _quantise(image: np.ndarray) -> tuple[np.ndarray, str, str]:
    """uint16 pixels with the DS slope and intercept that map them back to ``image``.

    Stored value q = round((v - intercept) / slope), intercept ≈ min, slope ≈ (max - min) / 65535,
    both computed from the 16-character decimal strings a reader parses; so
    |q * slope + intercept - v| ≤ slope / 2 (+ the decimal-string precision) ≤ (max - min) / 65535.
    """
    v = image.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    intercept = _ds_value(lo)
    span = hi - intercept
    if span <= 0:
        slope = 1.0
    else:
        slope = _ds_value(span / _LEVELS)
        for _ in range(64):  # the decimal rounding may leave the slope a hair too small
            if span / slope <= _LEVELS:
                break
            slope = _ds_value(slope * (1 + 1e-11))
    q = np.clip(np.rint((v - intercept) / slope), 0, _LEVELS).astype("<u2")
    return q, _ds(slope), _ds(intercept)


def _window(image: np.ndarray) -> tuple[str, str, str]:
    """Window centre and width from the 0.5 and 99.5 percentiles; LINEAR_EXACT when narrower than 1."""
    lo, hi = (float(p) for p in np.percentile(image.astype(np.float64), [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    width = hi - lo
    if width <= 0:
        width = max(abs(hi) * 1e-3, 1.0)
    centre = (lo + hi) / 2.0
    # LINEAR requires a width >= 1; LINEAR_EXACT allows any positive width (normalised images).
    function = "LINEAR" if width >= 1 else "LINEAR_EXACT"
    return _ds(centre), _ds(width), function


# ----------------------------------------------------------------------------- datasets
def _derived(provenance: dict[str, Any]) -> bool:
    """Rendered in a patient's own scan: that patient's pixels surround the rendered heart."""
    origin = provenance.get("image_origin")
    if origin is not None:
        return origin != "synthetic"
    return (provenance.get("mode") or "synthetic") != "synthetic" or (
        provenance.get("derived_from_patient") is True and "mask_origin" not in provenance)


def _mask_origin(provenance: dict[str, Any]) -> str:
    """synthetic (painted; also when the caller does not say), patient (the patient's own segmentation) or unknown."""
    o = provenance.get("mask_origin", "synthetic")
    return o if o in ("synthetic", "patient", "unknown") else "unknown"


def _status(provenance: dict[str, Any]) -> str:
    """The case as a whole: synthetic (nothing of a patient), derived (something of a patient) or unknown."""
    if _derived(provenance) or _mask_origin(provenance) == "patient":
        return "derived"
    return "unknown" if _mask_origin(provenance) == "unknown" else "synthetic"


def _provenance_text(case: Case, provenance: dict[str, Any], vendor: str, what: str = "image") -> str:
    if what == "image":
        lead = ("cmrstudio render in a patient's own scan: derived from patient data" if _derived(provenance)
                else "cmrstudio synthetic image of a patient's own segmentation: derived from patient data"
                if _mask_origin(provenance) == "patient"
                else "cmrstudio synthetic image; its mask's origin is not recorded" if _mask_origin(provenance) == "unknown"
                else "cmrstudio synthetic image, no patient data")
    else:
        lead = {"patient": "label map: the patient's own segmentation (derived from patient data)",
                "unknown": "label map whose origin is not recorded"}.get(_mask_origin(provenance), "label map painted in cmrstudio, no patient data")
    parts = [lead]
    for key in ("model", "model_sha256", "kind", "sampler", "steps", "guidance", "seed", "private", "dp_epsilon"):
        val = provenance.get(key)
        if val not in (None, ""):
            parts.append(f"{key}={val}")
    parts.append(f"vendor_style={vendor}")
    if case.phase:
        parts.append(f"phase={case.phase}")
    return _ascii("; ".join(parts), 1024, backslash=True)


def _series_description(provenance: dict[str, Any], vendor: str) -> str:
    words = ["DERIVED" if _derived(provenance) else "SYNTHETIC", "cmrstudio", _label(provenance.get("kind")), _label(provenance.get("model"))]
    if vendor and vendor != "unknown":
        words.append(f"{vendor}-style")
    return _ascii(" ".join(w for w in words if w), 64)


def _contributing_equipment(common: dict[str, Any], provenance: dict[str, Any]) -> Sequence:
    """One item: cmrstudio (and the model) as the equipment that synthesised the content."""
    item = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = SYNTHESIZING_EQUIPMENT
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    item.Manufacturer = "cmrstudio"
    model = _label(provenance.get("model"))
    if model:
        item.ManufacturerModelName = model
    item.SoftwareVersions = common["software"]
    item.ContributionDateTime = common["date"] + common["time"].split(".")[0]
    item.ContributionDescription = _ascii("rendered by a generative model from a label map" if model else "made by cmrstudio", 64)
    return Sequence([item])


def _base_dataset(case: Case, common: dict[str, Any]) -> Dataset:
    ds = Dataset()
    # SOP common
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.InstanceCreationDate = common["date"]
    ds.InstanceCreationTime = common["time"]
    ds.TimezoneOffsetFromUTC = "+0000"
    # Patient: synthetic; type 2 attributes present but empty.
    ds.PatientName = PATIENT_NAME
    ds.PatientID = _patient_id(common["study_uid"])
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    # LO: at most 64 characters
    ds.DeidentificationMethod = {"derived": "identifiers replaced; derived from a patient scan",
                                 "unknown": "identifiers replaced; mask origin not recorded"}.get(common["status"], "synthetic: no patient data")
    # Study
    ds.StudyInstanceUID = common["study_uid"]
    ds.StudyDate = common["date"]
    ds.StudyTime = common["time"]
    ds.StudyID = common["study_id"]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = {"derived": "DERIVED cmrstudio", "unknown": "cmrstudio render, mask origin not recorded"}.get(
        common["status"], "SYNTHETIC cmrstudio")
    # Series, equipment, frame of reference
    ds.Modality = "MR"
    ds.PatientPosition = PATIENT_POSITION
    ds.SeriesDate = common["date"]
    ds.SeriesTime = common["time"]
    ds.BodyPartExamined = "HEART"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "cmrstudio"
    ds.SoftwareVersions = common["software"]
    ds.FrameOfReferenceUID = common["frame_uid"]
    ds.PositionReferenceIndicator = ""
    # General image / MR image
    ds.ImageType = list(IMAGE_TYPE)
    ds.ContentDate = common["date"]
    ds.ContentTime = common["time"]
    ds.BurnedInAnnotation = "NO"
    ds.ScanningSequence = "RM"  # research mode: no acquisition took place
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SliceThickness = common["geometry"]["slice_spacing"]
    ds.SpacingBetweenSlices = common["geometry"]["slice_spacing"]
    ds.ImageOrientationPatient = common["geometry"]["orientation"]
    ds.PixelSpacing = common["geometry"]["pixel_spacing"]
    if not common["geometry"]["known"]:
        ds.ImageComments = UNKNOWN_SPACING_COMMENT
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(case.shape[1]), int(case.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _slice_dataset(base: Dataset, k: int, pixels: np.ndarray, series: dict[str, Any], geometry: dict) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.SeriesInstanceUID = series["uid"]
    ds.SeriesNumber = series["number"]
    ds.SeriesDescription = series["description"]
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = geometry["positions"][k]
    ds.SliceLocation = _ds(float(np.dot(np.asarray(geometry["positions"][k], float), series["normal"])))
    ds.DerivationDescription = series["derivation"]
    # (0008,001C): the standard's flag: YES when some or all of the content was made artificially; Type 3, so left
    # out when that is not known (a mask whose origin was not recorded)
    if series.get("synthetic") is not None:
        ds.SyntheticData = "YES" if series["synthetic"] else "NO"
    if series.get("equipment") is not None:
        ds.ContributingEquipmentSequence = series["equipment"]
    if series.get("slope") is not None:
        ds.RescaleIntercept = series["intercept"]
        ds.RescaleSlope = series["slope"]
    ds.WindowCenter = series["window"][0]
    ds.WindowWidth = series["window"][1]
    ds.VOILUTFunction = series["window"][2]
    if series.get("explanation"):
        ds.WindowCenterWidthExplanation = series["explanation"]
    ds.SmallestImagePixelValue = int(pixels.min())
    ds.LargestImagePixelValue = int(pixels.max())
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<u2").tobytes())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CMRSTUDIO"
    ds.file_meta = meta
    if not _PYDICOM3:  # pydicom 2.x takes the encoding from the dataset, 3.x from the transfer syntax
        ds.is_little_endian = True
        ds.is_implicit_VR = False
    ds.preamble = b"\x00" * 128
    return ds


def _save(ds: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        if _SAVE_HAS_ENFORCE:
            ds.save_as(tmp, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.save_as(str(tmp), write_like_original=False)


def _software_version() -> str:
    from cmrstudio import __version__

    return _ascii(f"cmrstudio {__version__}; pydicom {pydicom.__version__}", 64)


# ----------------------------------------------------------------------------- public
def write_dicom(
    case: Case,
    folder: str | Path,
    provenance: dict,
    *,
    study_uid: str | None = None,
    series_number: int = 1,
    quantisation: str = "auto",
) -> dict[str, list[Path]]:
    """Write ``case`` under ``folder`` as two DICOM series: ``folder/image/IM0001.dcm ...`` (the synthetic MR image)
    and ``folder/mask/IM0001.dcm ...`` (the label map as a second series). Returns {"image": [...], "mask": [...]}.

    One MR Image Storage file per slice (Explicit VR Little Endian), marked as the module notes say (SyntheticData,
    a Contributing Equipment item "Synthesizing Equipment", ImageType ``DERIVED\\SECONDARY\\OTHER``, SeriesDescription
    ``SYNTHETIC ...`` or ``DERIVED ...``, DerivationDescription from ``provenance``: model, model_sha256, kind,
    sampler, steps, guidance, seed, vendor). ``provenance`` may say ``image_origin`` (``synthetic`` or
    ``in-patient``; else its ``mode``) and ``mask_origin`` (``synthetic``, the default, ``patient`` or
    ``unknown``). Both series share a new StudyInstanceUID (or ``study_uid``) and a new
    FrameOfReferenceUID; every series and instance UID is new. The image series gets SeriesNumber
    ``series_number``, the mask ``series_number + 1``. A case without a mask gets no mask series
    (an empty list).

    Pixels (``quantisation="auto"``): the float image is stored as uint16 with RescaleSlope ≈
    (max - min) / 65535 and RescaleIntercept ≈ min, so the rescaled values read back differ from
    the image by at most **(max - min) / 65535** (half a step, plus the 16-character precision of
    the decimal tags). The mask is stored as uint16 labels 0–3 with no rescale: exact.

    Geometry comes from ``case.affine`` (converted to LPS as for a NIfTI read by SimpleITK); SimpleITK's
    ImageSeriesReader reads either series back with that origin, spacing and direction and
    ``GetArrayFromImage`` gives ``case.image`` in (Z, Y, X) order. (DICOM cannot say that slices run
    opposite to the row × column normal: for a left-handed affine each slice is still written at its
    true position, and readers that sort along the normal give the slices in reverse order.)
    ``affine=None`` writes an identity geometry with 1 mm placeholders and a note in ImageComments.

    Nothing is overwritten: a non-empty ``folder`` is refused, each file is written under a temporary
    name and renamed, and a failed export removes what it had written. Bad input (no image,
    non-finite pixels, a mask label outside 0–3) raises :class:`CmrError` before anything is written.
    """
    if quantisation not in QUANTISATIONS:
        raise CmrError(f"Quantisation {quantisation!r} is not one of {', '.join(QUANTISATIONS)}; use 'auto'.")
    if not isinstance(case, Case):
        raise CmrError(f"write_dicom needs a cmrstudio Case, got {type(case).__name__}.")
    folder = Path(folder).expanduser()
    provenance = dict(provenance or {})
    _check_case(case)
    try:
        series_number = int(series_number)
    except (TypeError, ValueError):
        raise CmrError(f"Series number {series_number!r} is not a whole number; give 1 or more.") from None
    if not 0 <= series_number < 2**31 - 1:
        raise CmrError(f"Series number {series_number} is out of range; give a number from 0 to 2147483646.")
    if study_uid is not None:
        study_uid = str(study_uid).strip()
        if not UID(study_uid).is_valid:
            raise CmrError(f"Study UID {study_uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters).")
        if study_uid in _source_uids(case):
            raise CmrError(
                f"Study UID {study_uid} belongs to the real source of case {case.case_id!r}; "
                "a synthetic export must not join a real study: leave it out to get a new one."
            )
    geometry = _geometry(case)
    _check_folder(folder)

    image_pixels, slope, intercept = _quantise(case.image)
    vendor = _label(provenance.get("vendor") or provenance.get("vendor_style")) or case.vendor
    now = _dt.datetime.now(_dt.timezone.utc)
    common = {
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S.%f"),
        "study_uid": study_uid or generate_uid(),
        "frame_uid": generate_uid(),
        "software": _software_version(),
        "geometry": geometry,
        "status": _status(provenance),
    }
    common["study_id"] = _study_id(common["study_uid"])
    mask_origin = _mask_origin(provenance)
    equipment = _contributing_equipment(common, provenance)
    ori = np.asarray([float(v) for v in geometry["orientation"]])
    normal = np.cross(ori[:3], ori[3:])
    base = _base_dataset(case, common)
    plans: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        (
            "image",
            image_pixels,
            {
                "uid": generate_uid(),
                "number": series_number,
                "description": _series_description(provenance, vendor),
                "derivation": _provenance_text(case, provenance, vendor, "image"),
                "synthetic": True,  # some (in a patient's scan) or all of it was made by the model
                "equipment": equipment,
                "slope": slope,
                "intercept": intercept,
                "window": _window(case.image),
                "normal": normal,
            },
        )
    ]
    if case.mask is not None:
        plans.append(
            (
                "mask",
                case.mask.astype("<u2"),
                {
                    "uid": generate_uid(),
                    "number": series_number + 1,
                    "description": {"patient": PATIENT_MASK_DESCRIPTION, "unknown": UNKNOWN_MASK_DESCRIPTION}.get(mask_origin, MASK_DESCRIPTION),
                    "derivation": _provenance_text(case, provenance, vendor, "mask"),
                    "synthetic": {"synthetic": True, "patient": False}.get(mask_origin),
                    "equipment": equipment if mask_origin == "synthetic" else None,
                    "slope": None,  # labels as stored: no rescale
                    "intercept": None,
                    "window": ("1.5", "4", "LINEAR"),
                    "explanation": "LABELS 0-3",
                    "normal": normal,
                },
            )
        )

    nz = case.shape[0]
    width = max(4, len(str(nz)))
    written: dict[str, list[Path]] = {"image": [], "mask": []}
    made_dirs: list[Path] = []
    try:
        if not folder.exists():
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True)
            made_dirs.extend(missing)  # deepest first
        for name, pixels, series in plans:
            sub = folder / name
            sub.mkdir()
            made_dirs.insert(0, sub)
            for k in range(nz):
                ds = _slice_dataset(base, k, pixels[k], series, geometry)
                path = sub / f"IM{k + 1:0{width}d}.dcm"
                _save(ds, path)
                written[name].append(path)
    except BaseException as exc:
        for paths in written.values():
            for p in paths:
                with contextlib.suppress(OSError):
                    p.unlink()
        for d in made_dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            raise CmrError(
                f"Writing the DICOM export of case {case.case_id!r} to {folder} failed ({exc.strerror or exc}); "
                "nothing was kept: free some space or choose a folder you can write to."
            ) from exc
        raise
    return written

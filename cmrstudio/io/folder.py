"""Recognise common dataset layouts in a folder and list their cases.

Layouts: cmrstudio (``<id>_image.nii.gz`` + ``<id>_mask.nii.gz`` + ``<id>.json``),
ACDC NIfTI (``patientNNN_frameNN(_gt).nii.gz``, with ``Info.cfg`` when present),
ACDC HDF5 (``patientNNN_frameNN.h5``), M&Ms (``<ID>_sa_ED(_gt).nii.gz``), nnU-Net
(``imagesTr/``, ``labelsTr/``, ``dataset.json``), Sunnybrook (``dicoms/`` +
``contourfiles/``), and a folder of DICOM files (one series).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cmrstudio.anatomy import VENDORS, vendor_from_manufacturer
from cmrstudio.errors import CmrError
from cmrstudio.io import sunnybrook
from cmrstudio.io.common import NIFTI_SUFFIXES, existing, has_suffix, is_dicom_file

# M&Ms vendor of the public case codes used in this project's development data; the
# challenge's dataset-information CSV, when present beside the files, takes precedence.
MNMS_KNOWN_VENDORS = {
    "H1N8S6": "siemens",
    "B5F8L9": "siemens",
    "G1K1V3": "philips",
    "L8N7Z0": "philips",
    "B9G4U2": "canon",
    "A5P5W0": "canon",
}
MNMS_VENDOR_LETTER = {"A": "siemens", "B": "philips", "C": "ge", "D": "canon"}

_ACDC = re.compile(r"^(patient\d{3})_frame(\d{2})(_gt)?(\.nii\.gz|\.nii|\.h5)$", re.I)
_MNMS = re.compile(r"^([A-Z0-9]{6})_sa_(ED|ES)(_gt)?\.nii(\.gz)?$", re.I)
_CMR = re.compile(r"^(.+)_(image|mask)\.nii(\.gz)?\Z", re.S)


@dataclass
class CaseRef:
    """A case found in a folder, not yet loaded."""

    case_id: str
    layout: str
    phase: str | None = None
    vendor: str = "unknown"
    image: Path | None = None
    mask: Path | None = None
    convention: str = "canonical"
    extra: dict[str, Any] = field(default_factory=dict)

    def load(self, frame: int | None = None):
        from cmrstudio.io import load_ref

        return load_ref(self, frame=frame)

    def summary(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "phase": self.phase,
            "vendor": self.vendor,
            "layout": self.layout,
            "image": str(self.image) if self.image else None,
            "mask": str(self.mask) if self.mask else None,
            "labels": self.convention,
        }


def _files(root: Path, recursive: bool = True) -> list[Path]:
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(f for f in it if f.is_file() and not f.name.startswith("."))


def _read_acdc_info(folder: Path) -> dict[str, int]:
    info = folder / "Info.cfg"
    out: dict[str, int] = {}
    if info.exists():
        try:
            text = info.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return out  # unreadable: the phases are then told from the frame numbers
        for line in text.splitlines():
            if ":" in line:
                k, v = (t.strip() for t in line.split(":", 1))
                if k in ("ED", "ES"):
                    try:
                        out[k] = int(v)
                    except ValueError:
                        pass
    return out


def scan_acdc(root: Path) -> list[CaseRef]:
    found: dict[tuple[str, int], dict[str, Path]] = {}
    for f in _files(root):
        m = _ACDC.match(f.name)
        if m:
            key = (m.group(1).lower(), int(m.group(2)))
            kind = "h5" if m.group(4).lower() == ".h5" else ("mask" if m.group(3) else "image")
            found.setdefault(key, {})[kind] = f
    frames_by_patient: dict[str, list[int]] = {}
    for pid, fr in found:
        frames_by_patient.setdefault(pid, []).append(fr)
    refs = []
    for (pid, fr), files in sorted(found.items()):
        anyfile = next(iter(files.values()))
        info = _read_acdc_info(anyfile.parent)
        if info:
            phase = "ED" if info.get("ED") == fr else "ES" if info.get("ES") == fr else None
        else:  # ACDC labels exactly two frames per patient, and frame 1 is end-diastole
            frames = sorted(frames_by_patient[pid])
            phase = "ED" if fr == frames[0] else "ES" if len(frames) == 2 else None
        if "h5" in files:
            refs.append(CaseRef(f"{pid}_frame{fr:02d}", "acdc-hdf5", phase, "siemens", files["h5"], files["h5"], "acdc"))
        else:
            refs.append(
                CaseRef(f"{pid}_frame{fr:02d}", "acdc-nifti", phase, "siemens", files.get("image"), files.get("mask"), "acdc")
            )
    return refs


def _mnms_vendor_table(root: Path) -> dict[str, str]:
    table = dict(MNMS_KNOWN_VENDORS)
    for csv_path in list(root.glob("*.csv")) + list(root.parent.glob("*.csv")):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    code = row.get("External code") or row.get("External Code")
                    ven = row.get("VendorName") or row.get("Vendor")
                    if code and ven:
                        v = ven.strip()
                        table[code.strip()] = MNMS_VENDOR_LETTER.get(v) or vendor_from_manufacturer(v)
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
    return table


def scan_mnms(root: Path) -> list[CaseRef]:
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for f in _files(root):
        m = _MNMS.match(f.name)
        if m:
            found.setdefault((m.group(1).upper(), m.group(2).upper()), {})["mask" if m.group(3) else "image"] = f
    vendors = _mnms_vendor_table(root)
    return [
        CaseRef(f"{cid}_{ph}", "mnms", ph, vendors.get(cid, "unknown"), files.get("image"), files.get("mask"), "mnms")
        for (cid, ph), files in sorted(found.items())
    ]


def scan_cmrstudio(root: Path) -> list[CaseRef]:
    found: dict[str, dict[str, Path]] = {}
    for f in _files(root):
        m = _CMR.match(f.name)
        if m:
            found.setdefault(str(f.parent / m.group(1)), {})[m.group(2)] = f
    refs = []
    for key, files in sorted(found.items()):
        side = Path(key + ".json")
        meta: dict[str, Any] = {}
        if side.exists():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CmrError(f"{side} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or delete the sidecar.") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise CmrError(f"{side} cannot be read as a JSON sidecar ({exc.__class__.__name__}); fix or delete it.") from None
            if not isinstance(meta, dict):
                raise CmrError(f"{side} holds a JSON {type(meta).__name__}, not a sidecar object; fix or delete it.")
            bad = [k for k in ("case_id", "phase", "vendor", "label_convention_written") if k in meta and not isinstance(meta[k], (str, type(None)))]
            if bad:
                raise CmrError(f"{side} gives {bad[0]} as {str(meta[bad[0]])[:40]!r}, not text; fix or delete the sidecar.")
            if meta.get("phase") not in (None, "ED", "ES"):
                raise CmrError(f"{side} gives the phase {meta['phase'][:20]!r}, which is not ED or ES; fix or delete the sidecar.")
            if meta.get("vendor") not in (None, *VENDORS):
                raise CmrError(f"{side} gives the vendor {meta['vendor'][:20]!r}, which is not one of {', '.join(VENDORS)}; "
                               "fix or delete the sidecar.")
        refs.append(
            CaseRef(
                meta.get("case_id") or Path(key).name,
                "cmrstudio",
                meta.get("phase"),
                meta.get("vendor") or "unknown",
                files.get("image"),
                files.get("mask"),
                meta.get("label_convention_written") or "canonical",
                {"sidecar": str(side) if side.exists() else None, "meta": meta},
            )
        )
    return refs


NNUNET_NAME_MAP = {
    "lv": "LV", "lvbloodpool": "LV", "leftventricle": "LV", "lvcavity": "LV", "lvc": "LV", "lvbp": "LV",
    "myo": "MYO", "myocardium": "MYO", "lvmyocardium": "MYO", "lvmyo": "MYO", "mlv": "MYO", "lvm": "MYO",
    "rv": "RV", "rvbloodpool": "RV", "rightventricle": "RV", "rvcavity": "RV", "rvc": "RV", "rvbp": "RV",
    "background": "BG", "bg": "BG",
}


def scan_nnunet(root: Path) -> list[CaseRef]:
    images = root / "imagesTr"
    if not images.is_dir():
        return []
    labels = root / "labelsTr"
    convention = "canonical"
    ds = root / "dataset.json"
    mapping: dict[int, int] | None = None
    if ds.exists():
        try:
            meta = json.loads(ds.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CmrError(f"{ds} is not valid JSON ({exc.msg}); fix dataset.json.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CmrError(f"{ds} cannot be read ({exc.__class__.__name__}); fix dataset.json.") from None
        lab = meta.get("labels", {}) if isinstance(meta, dict) else None
        if not isinstance(lab, dict):
            raise CmrError(f"{ds} has no \"labels\" object (name: value); fix dataset.json.")
        # nnU-Net v2 maps name -> value; v1 maps "value" -> name.
        pairs = [(v, k) for k, v in lab.items()] if all(str(k).isdigit() for k in lab) else list(lab.items())
        canon = {"BG": 0, "LV": 1, "MYO": 2, "RV": 3}
        m: dict[int, int] = {}
        unknown = []
        for name, value in pairs:
            key = NNUNET_NAME_MAP.get(re.sub(r"[^a-z]", "", str(name).lower()))
            try:
                ival = int(value)
            except (TypeError, ValueError):
                key = None
            if key is None:
                unknown.append(str(name))
            else:
                m[ival] = canon[key]
        if unknown:
            raise CmrError(
                f"{ds} names labels cmrstudio cannot map to LV, MYO and RV ({', '.join(unknown)}); "
                "rename them in dataset.json (e.g. background, LV, MYO, RV)."
            )
        if m:
            mapping = m
            convention = "nnunet-dataset.json"
    refs = []
    for f in sorted(images.iterdir()):
        if not has_suffix(f, NIFTI_SUFFIXES):
            continue
        name = re.sub(r"_0000\.nii(\.gz)?$", "", f.name)
        if name == f.name:
            continue
        mask = next((labels / (name + s) for s in NIFTI_SUFFIXES if (labels / (name + s)).exists()), None)
        refs.append(CaseRef(name, "nnunet", None, "unknown", f, mask, convention, {"mapping": mapping}))
    return refs


def scan_sunnybrook(root: Path) -> list[CaseRef]:
    if not sunnybrook.is_sunnybrook(root):
        return []
    refs = []
    for pid in sunnybrook.list_patients(root):
        for ph in ("ED", "ES"):
            refs.append(
                CaseRef(f"{pid}_{ph}", "sunnybrook", ph, "ge", root / "dicoms" / pid, None, "sunnybrook-contours", {"root": root, "patient": pid})
            )
    return refs


def scan_dicom(root: Path) -> list[CaseRef]:
    refs = []
    folders = sorted({f.parent for f in _files(root) if is_dicom_file(f)})
    for d in folders:
        cid = "_".join(d.relative_to(root).parts) if d != root else root.name
        refs.append(CaseRef(cid, "dicom", None, "unknown", d, None, "canonical"))
    return refs


SCANNERS: list[tuple[str, Callable[[Path], list[CaseRef]]]] = [
    ("sunnybrook", scan_sunnybrook),
    ("nnunet", scan_nnunet),
    ("cmrstudio", scan_cmrstudio),
    ("acdc", scan_acdc),
    ("mnms", scan_mnms),
]


def scan_folder(path: str | Path) -> list[CaseRef]:
    """List the cases in a folder, trying each known layout; DICOM series come last."""
    root = existing(path, "folder")
    if not root.is_dir():
        raise CmrError(f"{root} is a file, not a folder; use `cmrstudio info` on files directly.")
    refs: list[CaseRef] = []
    for _name, scanner in SCANNERS:
        refs.extend(scanner(root))
        if refs and _name in ("sunnybrook", "nnunet"):
            break
    if not refs:
        refs = scan_dicom(root)
    if not refs:
        raise CmrError(
            f"{root} holds no cases in a layout cmrstudio recognises (ACDC, M&Ms, nnU-Net imagesTr/labelsTr, "
            "Sunnybrook, cmrstudio <id>_image/<id>_mask, or DICOM); point to a dataset folder or to an image file."
        )
    return refs

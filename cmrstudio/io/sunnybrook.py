"""Sunnybrook Cardiac Data: DICOM slices plus manual LV contours (CC0).

Layout (as distributed, and in ``../shared/data/sunnybrook``)::

    dicoms/SCD0000N01/NNNN.dcm
    contourfiles/SC-HF-I-N/i-contours/IM-0001-NNNN-icontour-manual.txt   (LV endocardium)
    contourfiles/SC-HF-I-N/o-contours/IM-0001-NNNN-ocontour-manual.txt   (LV epicardium)
    link.csv   patient_id,original_id

Contoured images come in two cardiac phases per slice position. The phase whose
endocardial area is larger is end-diastole. Sunnybrook has no RV labels, and
myocardium only on slices with an epicardial contour.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from cmrstudio.anatomy import LV, rasterise_contours
from cmrstudio.errors import CmrError
from cmrstudio.io.sitk_io import phases_by_position, read_dicom_header, stack_dicom, dicom_files

CITATION = (
    'P. Radau, Y. Lu, K. Connelly, G. Paul, A. J. Dick, G. A. Wright, "Evaluation Framework for '
    'Algorithms Segmenting Short Axis Cardiac MRI", The MIDAS Journal, 2009. '
    "Sunnybrook Cardiac Data, CC0 1.0."
)
_CONTOUR = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$", re.I)


def is_sunnybrook(root: Path) -> bool:
    return (root / "dicoms").is_dir() and (root / "contourfiles").is_dir()


def link_table(root: Path) -> dict[str, str]:
    """patient folder (SCD...) -> contour folder (SC-HF-I-N)."""
    table: dict[str, str] = {}
    link = root / "link.csv"
    if link.exists():
        try:
            with open(link, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    vals = [v for v in row.values() if isinstance(v, str)]
                    if len(vals) >= 2 and vals[0].strip() and vals[1].strip():
                        table[vals[0].strip()] = vals[1].strip()
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise CmrError(f"{link} cannot be read as a table of patient,contour-folder rows ({exc.__class__.__name__}); "
                           "fix or restore link.csv.") from None
    else:  # fall back to identical names
        for d in (root / "dicoms").iterdir():
            if (root / "contourfiles" / d.name).is_dir():
                table[d.name] = d.name
    return table


def read_contour(path: Path) -> np.ndarray:
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise CmrError(f"{path} is not a contour file of 'x y' pixel coordinates per line.") from exc
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
        raise CmrError(f"{path} is not a contour file of 'x y' pixel coordinates per line.")
    return pts


def contours_for(root: Path, contour_dir: str) -> dict[int, dict[str, Path]]:
    out: dict[int, dict[str, Path]] = {}
    base = root / "contourfiles" / contour_dir
    for f in base.rglob("*contour-manual.txt"):
        m = _CONTOUR.search(f.name)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2).lower()] = f
    return out


def list_patients(root: Path) -> list[str]:
    return sorted(link_table(root))


def read_sunnybrook(root: Path, patient: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
    """Read one patient: {'ED': (image, mask, affine, meta), 'ES': (...)} in canonical labels."""
    table = link_table(root)
    if patient not in table:
        raise CmrError(f"{root} has no Sunnybrook patient {patient!r}; it has {', '.join(sorted(table))}.")
    folder = root / "dicoms" / patient
    contours = contours_for(root, table[patient])
    headers = []
    for f in dicom_files(folder):
        try:
            num = int(f.stem)
        except ValueError:
            continue
        if num in contours:
            headers.append(read_dicom_header(f))
    if not headers:
        raise CmrError(f"{folder} has no DICOM image with a matching contour in contourfiles/{table[patient]}.")
    stacks = phases_by_position(headers)
    n_phases = max(len(s) for s in stacks)
    volumes = []
    for k in range(n_phases):
        chosen = [s[k] for s in stacks if len(s) > k]
        notes: dict = {}
        image, affine = stack_dicom(chosen, notes)
        mask = np.zeros(image.shape, dtype=np.uint8)
        for z, s in enumerate(chosen):
            c = contours[int(s.path.stem)]
            endo = read_contour(c["i"]) if "i" in c else None
            epi = read_contour(c["o"]) if "o" in c else None
            mask[z] = rasterise_contours(image.shape[1:], endo, epi)
        meta = {
            "format": "dicom+contours",
            "dataset": "sunnybrook",
            "path": str(folder),
            "files": [str(s.path) for s in chosen],
            "trigger_times_ms": [s.trigger_time for s in chosen],
            "manufacturer": chosen[0].manufacturer,
            "label_convention": "sunnybrook-contours",
            "notes": "LV from i-contours; myocardium only where an o-contour exists; no RV labels.",
            "citation": CITATION,
            **notes,
        }
        volumes.append((image, mask, affine, meta))
    # The phase with the larger LV blood pool is end-diastole.
    order = sorted(range(len(volumes)), key=lambda k: -int((volumes[k][1] == LV).sum()))
    out = {}
    for name, k in zip(("ED", "ES"), order):
        out[name] = volumes[k]
    return out

"""MHA/NRRD images and DICOM (single files, series, cine series) through SimpleITK."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmrstudio.anatomy import vendor_from_manufacturer
from cmrstudio.errors import CmrError
from cmrstudio.io.common import (
    LPS_TO_RAS,
    affine_to_sitk_geometry,
    affine_xyz_to_zyx,
    atomic_path,
    existing,
    is_dicom_file,
    pick_frame,
    sitk_geometry_to_affine,
)


def read_sitk(path: str | Path, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read an MHA/MHD/NRRD file into a (Z, Y, X) array and its (z, y, x) RAS affine."""
    p = existing(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise CmrError(f"{p} could not be read ({str(exc).strip().splitlines()[-1]}); the file may be corrupt.") from exc
    meta = {"format": p.suffix.lstrip(".").lower(), "path": str(p)}
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CmrError(f"{p} has {img.GetNumberOfComponentsPerPixel()} channels per pixel; give a single-channel image.")
    if img.GetDimension() == 4:
        k = pick_frame(p, img.GetSize()[3], frame)
        img = img[:, :, :, k]
        meta["frame"] = k
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if img.GetDimension() != 3:
        raise CmrError(f"{p} has {img.GetDimension()} dimensions; cmrstudio reads 2D, 3D or 4D images.")
    arr = sitk.GetArrayFromImage(img)
    affine = sitk_geometry_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    return arr, affine, meta


def write_sitk(path: str | Path, array: np.ndarray, affine_zyx: np.ndarray | None) -> Path:
    img = sitk.GetImageFromArray(np.asarray(array))
    if affine_zyx is not None:
        origin, spacing, direction = affine_to_sitk_geometry(affine_zyx)
        img.SetOrigin(origin)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path


# ----------------------------------------------------------------------------- DICOM
@dataclass
class DicomSlice:
    path: Path
    series_uid: str
    position: np.ndarray  # LPS mm
    orientation: np.ndarray  # 6 direction cosines
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    trigger_time: float | None
    instance: int
    thickness: float | None
    manufacturer: str
    description: str
    extra: dict = field(default_factory=dict)


def _tag(reader: sitk.ImageFileReader, key: str) -> str | None:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return None


def read_dicom_header(path: Path) -> DicomSlice:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise CmrError(f"{path} could not be read as DICOM; the file may be corrupt or not an image.") from exc
    pos = _floats(_tag(r, "0020|0032"))
    ori = _floats(_tag(r, "0020|0037"))
    ps = _floats(_tag(r, "0028|0030"))
    if pos is None or ori is None or len(ori) != 6:
        origin = r.GetOrigin()
        d = r.GetDirection()
        pos = list(origin[:3])
        ori = [d[0], d[3], d[6], d[1], d[4], d[7]] if len(d) == 9 else [1, 0, 0, 0, 1, 0]
    if ps is None or len(ps) != 2:
        sp = r.GetSpacing()
        ps = [sp[1], sp[0]]
    tt = _floats(_tag(r, "0018|1060"))
    inst = _floats(_tag(r, "0020|0013"))
    th = _floats(_tag(r, "0018|0050"))
    return DicomSlice(
        path=path,
        series_uid=_tag(r, "0020|000e") or "unknown-series",
        position=np.asarray(pos[:3], dtype=np.float64),
        orientation=np.asarray(ori, dtype=np.float64),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        trigger_time=tt[0] if tt else None,
        instance=int(inst[0]) if inst else 0,
        thickness=th[0] if th else None,
        manufacturer=_tag(r, "0008|0070") or "",
        description=_tag(r, "0008|103e") or "",
        extra={"patient_id": _tag(r, "0010|0020"), "spacing_between": _floats(_tag(r, "0018|0088"))},
    )


def dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and is_dicom_file(f))


def group_series(headers: list[DicomSlice]) -> dict[str, list[DicomSlice]]:
    groups: dict[str, list[DicomSlice]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    return dict(groups)


def phases_by_position(slices: list[DicomSlice]) -> list[list[DicomSlice]]:
    """Split one series into stacks of slices at distinct positions, one list per position,
    each ordered in time (trigger time, then instance number); positions ordered along the normal."""
    normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
    by_pos: dict[float, list[DicomSlice]] = defaultdict(list)
    for s in slices:
        by_pos[round(float(np.dot(s.position, normal)), 2)].append(s)
    out = []
    for key in sorted(by_pos):
        out.append(sorted(by_pos[key], key=lambda s: (s.trigger_time if s.trigger_time is not None else 0.0, s.instance)))
    return out


def stack_dicom(slices: list[DicomSlice]) -> tuple[np.ndarray, np.ndarray]:
    """Read the pixel data of slices at distinct positions (ordered) into (Z, Y, X) + affine."""
    arrays = []
    for s in slices:
        try:
            img = sitk.ReadImage(str(s.path))
        except RuntimeError as exc:
            raise CmrError(f"{s.path} could not be read as DICOM; the file may be corrupt.") from exc
        a = sitk.GetArrayFromImage(img)
        if a.ndim == 3 and a.shape[0] != 1:
            raise CmrError(
                f"{s.path} is a multi-frame DICOM file ({a.shape[0]} frames in one file), which cmrstudio "
                "does not read yet; export the series as one file per image."
            )
        arrays.append(a.reshape(a.shape[-2:]).astype(np.float32))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise CmrError(
            f"The DICOM slices in {slices[0].path.parent} have different sizes {sorted(shapes)}; "
            "they are not one series: point to a folder with one series."
        )
    vol = np.stack(arrays)
    row_cos, col_cos = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row_cos, col_cos)
    dy, dx = slices[0].pixel_spacing
    if len(slices) > 1:
        proj = np.array([np.dot(s.position, normal) for s in slices])
        gaps = np.diff(proj)
        dz = float(np.median(gaps))
        if np.any(np.abs(gaps - dz) > max(0.05 * abs(dz), 0.1)):
            k = int(np.argmax(np.abs(gaps - dz)))
            raise CmrError(
                f"The DICOM slices in {slices[0].path.parent} are unevenly spaced ({gaps[k]:.2f} mm between "
                f"{slices[k].path.name} and {slices[k + 1].path.name}, {dz:.2f} mm elsewhere); a slice is missing: "
                "restore it or read the slices one by one."
            )
    else:
        sb = slices[0].extra.get("spacing_between")
        dz = float(sb[0]) if sb else float(slices[0].thickness or 1.0)
    a = np.eye(4)
    a[:3, 0] = row_cos * dx  # column index (x) moves along the row direction
    a[:3, 1] = col_cos * dy
    a[:3, 2] = normal * dz
    a[:3, 3] = slices[0].position
    return vol, affine_xyz_to_zyx(LPS_TO_RAS @ a)


def read_dicom(
    path: str | Path, frame: int | None = None, series: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a single DICOM file, or a folder holding one series (optionally a cine: pick ``frame``)."""
    p = existing(path)
    files = dicom_files(p)
    if not files:
        raise CmrError(f"{p} holds no DICOM files; point to a folder of .dcm files or a single DICOM file.")
    headers = [read_dicom_header(f) for f in files]
    groups = group_series(headers)
    if series is not None:
        match = {k: v for k, v in groups.items() if k == series or k.endswith(series)}
        if not match:
            raise CmrError(f"{p} has no DICOM series {series!r}; it holds: {', '.join(groups)}.")
        groups = match
    if len(groups) > 1:
        desc = "; ".join(f"{uid} ({v[0].description or 'no description'}, {len(v)} files)" for uid, v in groups.items())
        raise CmrError(
            f"{p} holds {len(groups)} DICOM series ({desc}); put each series in its own folder "
            "or choose one with --series UID."
        )
    uid, slices = next(iter(groups.items()))
    stacks = phases_by_position(slices)
    n_phases = max(len(s) for s in stacks)
    meta = {
        "format": "dicom",
        "path": str(p),
        "series_uid": uid,
        "manufacturer": slices[0].manufacturer,
        "vendor": vendor_from_manufacturer(slices[0].manufacturer),
        "n_files": len(files),
    }
    if n_phases > 1:
        frame = pick_frame(p, n_phases, frame, what="a cine series with {n} phases per slice")
        short = [s[0].path.name for s in stacks if len(s) != n_phases]
        if short:
            raise CmrError(
                f"{p} is a cine with {n_phases} phases, but the slice of {short[0]} has fewer; "
                "the series is incomplete: restore the missing images."
            )
        chosen = [s[frame] for s in stacks]
        meta["frame"] = int(frame)
        meta["n_frames"] = int(n_phases)
    else:
        chosen = [s[0] for s in stacks]
    vol, affine = stack_dicom(chosen)
    meta["files"] = [str(s.path) for s in chosen]
    return vol, affine, meta

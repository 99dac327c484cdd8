"""MHA/NRRD images and DICOM (single files, series, cine series) through SimpleITK."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from cmrstudio.anatomy import vendor_from_manufacturer
from cmrstudio.errors import CmrError
from cmrstudio.io.checks import check_dtype, check_shape, gzip_check, note, quietly, reason, sane_affine
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


class _SimpleITK:
    """SimpleITK, imported when a file first needs it: NIfTI, HDF5 and training read none of it, and an environment
    without it (the GPU training image) still imports cmrstudio."""

    def __getattr__(self, name: str):
        try:
            import SimpleITK
        except ImportError:
            raise CmrError("Reading or writing DICOM, MetaImage and NRRD files needs SimpleITK, which is not installed here; "
                           "install it with `pip install SimpleITK`.") from None
        return getattr(SimpleITK, name)


sitk = _SimpleITK()


# SimpleITK takes file names as UTF-8 text: a name that is not valid UTF-8 (lone surrogates in Python)
# aborts the whole process inside its C++ layer. Such paths are reached through a temporary symbolic link.
def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@contextlib.contextmanager
def itk_path(path: Path) -> Iterator[str]:
    """A name SimpleITK can open for ``path``: the path itself, or a link to it (or to its folder) under a
    temporary folder when the path is not valid UTF-8."""
    p = Path(path)
    if _utf8(p):
        yield str(p)
        return
    tmp = tempfile.mkdtemp(prefix="cmrstudio-itk-")
    try:
        if _utf8(Path(p.name)):  # only a folder above is odd: link the folder, so detached data files are found
            os.symlink(p.parent.resolve(), os.path.join(tmp, "d"))
            yield os.path.join(tmp, "d", p.name)
        else:
            suffix = next((s for s in (".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".dicom", ".ima")
                           if p.name.lower().endswith(s)), "")
            os.symlink(p.resolve(), os.path.join(tmp, "f" + suffix))
            yield os.path.join(tmp, "f" + suffix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=1)
def _complex_ids() -> frozenset:
    return frozenset(getattr(sitk, n) for n in ("sitkComplexFloat32", "sitkComplexFloat64") if hasattr(sitk, n))


@lru_cache(maxsize=1)
def _bytes_per_pixel() -> dict:
    return {getattr(sitk, n): b for n, b in (("sitkUInt8", 1), ("sitkInt8", 1), ("sitkUInt16", 2), ("sitkInt16", 2),
                                            ("sitkUInt32", 4), ("sitkInt32", 4), ("sitkUInt64", 8), ("sitkInt64", 8),
                                            ("sitkFloat32", 4), ("sitkFloat64", 8)) if hasattr(sitk, n)}


def _text_header(p: Path) -> tuple[str, dict[str, str], int] | None:
    """The text header of a MetaImage (.mha/.mhd) or NRRD (.nrrd/.nhdr) file: (kind, fields, bytes before the data)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    fields: dict[str, str] = {}
    pos = 0
    if head.startswith(b"NRRD"):
        while True:
            nl = head.find(b"\n", pos)
            if nl < 0:
                return None
            line = head[pos:nl].decode("latin-1").rstrip("\r")
            pos = nl + 1
            if line == "":
                return "nrrd", fields, pos
            if line.startswith("#") or ":" not in line:
                continue
            key, val = line.split(":", 1)
            fields[key.strip().lower()] = val.lstrip("=").strip()
    while True:  # MetaImage: Key = Value lines up to ElementDataFile
        nl = head.find(b"\n", pos)
        if nl < 0:
            return None
        line = head[pos:nl].decode("latin-1").rstrip("\r")
        pos = nl + 1
        if "=" in line:
            key, val = line.split("=", 1)
            fields[key.strip().lower()] = val.strip()
            if key.strip().lower() == "elementdatafile":
                return "meta", fields, pos


def _numbers(text: str) -> bool:
    try:
        vals = [float(v) for v in text.split()]
    except ValueError:
        return False
    return bool(vals) and all(math.isfinite(v) for v in vals)


def _check_payload(p: Path, size: tuple[int, ...], itemsize: int, meta: dict) -> bool | None:
    """MetaImage/NRRD: a compressed payload checked to its end; returns whether the header gives a spacing
    (None: it gives one that is not numbers, already said)."""
    hdr = _text_header(p)
    if hdr is None:
        return True
    kind, fields, offset = hdr
    if kind == "meta":
        for key in ("offset", "origin", "position", "transformmatrix", "rotation", "orientation", "elementspacing"):
            if key in fields and not _numbers(fields[key]):
                note(meta, f"{p} has a header field {key} = {fields[key][:60]!r}, which is not finite numbers; its geometry is not "
                           "used and spacing is treated as unknown: give --spacing z,y,x (mm) if you know it.")
                return None
        if fields.get("compresseddata", "").lower() == "true" and fields.get("elementdatafile", "").upper() == "LOCAL":
            gzip_check(p, math.prod(size) * itemsize, offset, meta, zlib_format=True)
        return any(k in fields for k in ("elementspacing", "elementsize"))
    has_spacing = any(k in fields for k in ("space directions", "spacings"))
    if fields.get("encoding", "raw").lower() in ("gzip", "gz"):
        data_file = fields.get("data file") or fields.get("datafile")
        target, off = (p, offset) if not data_file else (p.parent / data_file, 0)
        if data_file and not target.is_file():
            raise CmrError(f"{p} names its data file {data_file}, which is not beside it; put the two files together.")
        if not data_file or (" " not in data_file and "%" not in data_file):  # not a list or pattern of files
            gzip_check(target, math.prod(size) * itemsize, off, meta)
    return has_spacing


def read_sitk(path: str | Path, frame: int | None = None, kind: str = "image") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read an MHA/MHD/NRRD file into a (Z, Y, X) array and its (z, y, x) RAS affine (None when the
    file gives no usable spacing); the header is checked before any pixel is read."""
    p = existing(path)
    fmt = p.suffix.lstrip(".").lower() or "image"
    meta: dict = {"format": fmt, "path": str(p)}
    if p.is_dir():
        raise CmrError(f"{p} is a folder, not a {fmt.upper()} file; give the image file inside it.")
    with itk_path(p) as name:
        return _read_sitk(p, name, fmt, frame, kind, meta)


def _read_sitk(p: Path, name: str, fmt: str, frame: int | None, kind: str, meta: dict):
    r = sitk.ImageFileReader()
    r.SetFileName(name)
    _, failed = quietly(r.ReadImageInformation)
    if failed:
        raise CmrError(f"{p} could not be read as {fmt.upper()} ({reason(*failed)}); the file may be corrupt or not an image: "
                       "export or copy it again.")
    dim, size, pid = r.GetDimension(), tuple(int(v) for v in r.GetSize()), r.GetPixelID()
    if pid in _complex_ids():
        raise CmrError(f"{p} holds complex values, which cmrstudio cannot show as an MR image; give the magnitude image instead.")
    if r.GetNumberOfComponents() != 1:
        raise CmrError(f"{p} has {r.GetNumberOfComponents()} channels per pixel (colour or vector); give a single-channel image.")
    if dim < 2 or dim > 4:
        raise CmrError(f"{p} has {dim} dimension{'s' if dim != 1 else ''} ({'×'.join(map(str, size))}); cmrstudio reads 2D, 3D "
                       "or 4D (cine) images.")
    check_shape(p, size[::-1], "array")
    vol = size[:3] if dim >= 3 else size + (1,)
    check_shape(p, vol[::-1], kind)
    direction = np.asarray(r.GetDirection(), dtype=np.float64)
    n = int(round(math.sqrt(direction.size)))
    if n * n == direction.size and n > 0 and (not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction.reshape(n, n))) < 1e-6):
        raise CmrError(f"{p} gives a direction matrix (TransformMatrix or space directions) that is singular "
                       f"({' '.join(f'{v:g}' for v in direction)}), so its axes are undefined; fix that field in its header.")
    k = pick_frame(p, size[3], frame) if dim == 4 else None
    has_spacing = _check_payload(p, size, _bytes_per_pixel().get(pid, 1), meta)
    if k is not None:
        r.SetExtractIndex([0, 0, 0, k])
        r.SetExtractSize([size[0], size[1], size[2], 0])  # 0 collapses the time axis: one 3D frame is read
        meta["frame"] = k
    info_spacing = tuple(float(v) for v in r.GetSpacing())
    img, failed = quietly(r.Execute)
    if failed:
        raise CmrError(f"{p} could not be read as {fmt.upper()} ({reason(*failed)}); the file may be truncated or corrupt: "
                       "export or copy it again.")
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    arr = sitk.GetArrayFromImage(img)
    check_dtype(p, arr.dtype, kind)
    spacing = tuple(float(v) for v in img.GetSpacing())
    if has_spacing is None:
        return arr, None, meta
    if not has_spacing:
        note(meta, f"{p} does not give a voxel spacing (its header has no {'ElementSpacing' if fmt in ('mha', 'mhd') else 'space directions or spacings'}); "
                   "spacing is treated as unknown: give --spacing z,y,x (mm) if you know it.")
        return arr, None, meta
    if any(v < 0 for v in spacing + info_spacing):
        neg = spacing if any(v < 0 for v in spacing) else info_spacing
        note(meta, f"{p} gives a negative voxel size ({', '.join(f'{v:g}' for v in neg)}); its magnitude was used, "
                   "the axis running the other way.")
    try:
        affine = sitk_geometry_to_affine(img.GetOrigin(), spacing, img.GetDirection())
    except (ValueError, np.linalg.LinAlgError):
        affine = None
    return arr, sane_affine(p, affine, arr.shape, meta), meta


def write_sitk(path: str | Path, array: np.ndarray, affine_zyx: np.ndarray | None) -> Path:
    img = sitk.GetImageFromArray(np.asarray(array))
    if affine_zyx is not None:
        origin, spacing, direction = affine_to_sitk_geometry(affine_zyx)
        img.SetOrigin(origin)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
    path = Path(path)
    with atomic_path(path) as tmp:
        if _utf8(tmp):
            sitk.WriteImage(img, str(tmp), useCompression=True)
        elif path.name.lower().endswith((".mha", ".nrrd")):  # one file: write it under a plain name, then copy it in
            with tempfile.TemporaryDirectory(prefix="cmrstudio-itk-") as d:
                plain = os.path.join(d, "out" + Path(path.name.lower()).suffix)
                sitk.WriteImage(img, plain, useCompression=True)
                shutil.copyfile(plain, tmp)
        else:
            raise CmrError(f"{path} is not a valid UTF-8 name, which the MHD/NHDR writer cannot handle; "
                           "choose a plain name or write .mha, .nrrd or .nii.gz.")
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
    size: tuple[int, ...] = ()  # (columns, rows[, frames]) as the header declares them
    has_position: bool = True  # a usable Image Position (Patient)
    has_orientation: bool = True  # usable Image Orientation (Patient) direction cosines
    has_spacing: bool = True  # a usable Pixel Spacing


def _tag(reader: sitk.ImageFileReader, key: str) -> str | None:
    try:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None
    except (RuntimeError, UnicodeDecodeError):  # a value that is not text
        return None


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return None


def _finite(vals: list[float] | None, n: int) -> list[float] | None:
    """``vals`` if it holds at least ``n`` finite numbers (the first ``n`` of them), else None."""
    if vals is None or len(vals) < n or not all(math.isfinite(v) for v in vals[:n]):
        return None
    return vals[:n]


def _pixel_data_shortfall(path: Path, size: tuple[int, ...]) -> str | None:
    """For uncompressed pixel data: a phrase saying how much is missing, or None when it is all there (or when
    that cannot be told: compressed data, a file pydicom cannot parse though SimpleITK can)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=256, force=True)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and ts.is_compressed:
            return None
        elem = ds.get_item(0x7FE00010, keep_deferred=True)
        if elem is None:
            return "it has no pixel data"
        length = getattr(elem, "length", None)
        if length is None or length == 0xFFFFFFFF:  # undefined length: encapsulated, not native
            return None
        bits = int(ds.get("BitsAllocated", 16) or 16)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(size[2]) if len(size) > 2 else 1
        needed = int(size[0]) * int(size[1]) * frames * samples * ((bits + 7) // 8)
    except Exception:  # pydicom could not tell; SimpleITK reads what is there
        return None
    if length < needed:
        return f"{size[1]}×{size[0]}{f'×{frames}' if frames > 1 else ''} pixels of {bits} bits need {needed:,} bytes, it has {length:,}"
    return None


def read_dicom_header(path: Path) -> DicomSlice:
    """One DICOM file's header, checked before its pixels are read: one channel of numbers, a size within
    the limits, pixel data as long as the header declares (uncompressed files), geometry tags that parse."""
    r = sitk.ImageFileReader()
    with itk_path(path) as name:
        r.SetFileName(name)
        _, failed = quietly(r.ReadImageInformation)
    if failed:
        raise CmrError(f"{path} could not be read as DICOM ({reason(*failed)}); the file may be corrupt, hold no "
                       "pixel data, or not be an image.")
    size = tuple(int(v) for v in r.GetSize())
    if r.GetPixelID() in _complex_ids():
        raise CmrError(f"{path} holds complex values; give the magnitude image instead.")
    if r.GetNumberOfComponents() != 1:
        raise CmrError(f"{path} has {r.GetNumberOfComponents()} channels per pixel (a colour image); give a greyscale MR image.")
    check_shape(path, size[::-1], "image")
    short = _pixel_data_shortfall(path, size)
    if short:
        raise CmrError(f"{path} holds less pixel data than its header declares ({short}); it is truncated or damaged: "
                       "export or copy it again.")
    pos = _finite(_floats(_tag(r, "0020|0032")), 3)
    ori = _finite(_floats(_tag(r, "0020|0037")), 6)
    if ori is not None:
        rc, cc = np.asarray(ori[:3]), np.asarray(ori[3:])
        if np.linalg.norm(rc) < 1e-3 or np.linalg.norm(cc) < 1e-3 or np.linalg.norm(np.cross(rc, cc)) < 1e-3:
            ori = None  # zero or parallel direction cosines describe no plane
    ps = _finite(_floats(_tag(r, "0028|0030")), 2) or _finite(_floats(_tag(r, "0018|1164")), 2)
    if ps is not None and min(ps) <= 0:
        ps = None
    tt = _finite(_floats(_tag(r, "0018|1060")), 1)
    inst = _finite(_floats(_tag(r, "0020|0013")), 1)
    th = _finite(_floats(_tag(r, "0018|0050")), 1)
    sb = _finite(_floats(_tag(r, "0018|0088")), 1)
    return DicomSlice(
        path=path,
        series_uid=_tag(r, "0020|000e") or "unknown-series",
        position=np.asarray(pos if pos else (0.0, 0.0, 0.0), dtype=np.float64),
        orientation=np.asarray(ori if ori else (1, 0, 0, 0, 1, 0), dtype=np.float64),
        pixel_spacing=(float(ps[0]), float(ps[1])) if ps else (1.0, 1.0),
        trigger_time=tt[0] if tt else None,
        instance=int(inst[0]) if inst and abs(inst[0]) < 2**31 else 0,
        thickness=th[0] if th and th[0] > 0 else None,
        manufacturer=_tag(r, "0008|0070") or "",
        description=_tag(r, "0008|103e") or "",
        extra={"patient_id": _tag(r, "0010|0020"), "spacing_between": sb if sb and sb[0] > 0 else None},
        size=size,
        has_position=pos is not None,
        has_orientation=ori is not None,
        has_spacing=ps is not None,
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


def stack_dicom(slices: list[DicomSlice], meta: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the pixel data of slices at distinct positions (ordered) into (Z, Y, X) + affine (None when
    the files give no usable spacing: said as a warning and noted in ``meta``)."""
    where = slices[0].path.parent
    sizes = {s.size[:2] for s in slices if s.size}
    if len(sizes) > 1:
        raise CmrError(f"The DICOM slices in {where} have different sizes ({', '.join('×'.join(map(str, z)) for z in sorted(sizes))}); "
                       "they are not one series: point to a folder with one series.")
    if sizes:
        cols, rows = next(iter(sizes))
        check_shape(where, (len(slices), rows, cols), "volume")
    if len(slices) > 1:
        lost = next((s for s in slices if not (s.has_position and s.has_orientation)), None)
        if lost is not None:
            raise CmrError(f"{lost.path} has no usable Image Position or Orientation (0020,0032 / 0020,0037), so the slices of "
                           f"{where} cannot be put in order; restore those tags, or read the files one by one.")
    arrays = []
    for s in slices:
        with itk_path(s.path) as name:
            img, failed = quietly(sitk.ReadImage, name)
        if failed:
            raise CmrError(f"{s.path} could not be read as DICOM ({reason(*failed)}); the file may be corrupt.")
        a = sitk.GetArrayFromImage(img)
        if a.ndim == 3 and a.shape[0] != 1:
            raise CmrError(
                f"{s.path} is a multi-frame DICOM file ({a.shape[0]} frames in one file), which cmrstudio "
                "does not read yet; export the series as one file per image."
            )
        if a.ndim not in (2, 3) or a.size != math.prod(a.shape[-2:]):
            raise CmrError(f"{s.path} holds pixels of shape {a.shape}, not one greyscale image; give a greyscale MR image.")
        arrays.append(a.reshape(a.shape[-2:]).astype(np.float32))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise CmrError(
            f"The DICOM slices in {where} have different sizes {sorted(shapes)}; "
            "they are not one series: point to a folder with one series."
        )
    vol = np.stack(arrays)
    if len(slices) == 1 and not (slices[0].has_position and slices[0].has_orientation):
        note(meta, f"{slices[0].path} has no usable Image Position or Orientation (0020,0032 / 0020,0037); its origin is "
                   "taken as 0 and its rows and columns as the scanner's x and y axes.")
    if not all(s.has_spacing for s in slices):
        lost = next(s for s in slices if not s.has_spacing)
        note(meta, f"{lost.path} has no usable Pixel Spacing (0028,0030); spacing is treated as unknown: "
                   "give --spacing z,y,x (mm) if you know it.")
        return vol, None
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
                f"The DICOM slices in {where} are unevenly spaced ({gaps[k]:.2f} mm between "
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
    return vol, sane_affine(slices[0].path if len(slices) == 1 else where, affine_xyz_to_zyx(LPS_TO_RAS @ a), vol.shape, meta)


def read_dicom(
    path: str | Path, frame: int | None = None, series: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict]:
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
    sizes = sorted({s.size[:2] for s in slices if s.size})
    if len(sizes) > 1:
        raise CmrError(f"The DICOM images of {p} have different sizes ({', '.join('×'.join(map(str, z[::-1])) for z in sizes)} pixels); "
                       "they are not one series: point to a folder with one series.")
    lost = next((s for s in slices if not (s.has_position and s.has_orientation)), None)
    if lost is not None and len(slices) > 1:
        raise CmrError(f"{lost.path} has no usable Image Position or Orientation (0020,0032 / 0020,0037), so the {len(slices)} "
                       f"images of {p} cannot be put in order; restore those tags, or read the files one by one.")
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
    vol, affine = stack_dicom(chosen, meta)
    meta["files"] = [str(s.path) for s in chosen]
    return vol, affine, meta

"""Shared helpers for readers and writers: paths, geometry conversions, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cmrstudio.errors import CmrError

# (z, y, x, 1) <-> (x, y, z, 1): the permutation is its own inverse.
SWAP_XYZ = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def existing(path: str | os.PathLike, what: str = "file") -> Path:
    """The path as a :class:`Path` if it is a regular file or a folder; otherwise one sentence saying what it is."""
    try:
        p = Path(path).expanduser()
        st = os.stat(p)
    except ValueError:  # an embedded NUL byte
        raise CmrError(f"{str(path)!r} is not a valid path (it holds a NUL character); check how it was typed.") from None
    except RuntimeError:  # expanduser without a home folder
        raise CmrError(f"{path} cannot be resolved (no home folder to expand '~'); give the full path.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or (os.path.islink(p) and exc.errno == errno.ENOENT):
            raise CmrError(f"{p} is a symbolic link that leads nowhere (its target is missing or the link loops back on itself); "
                           f"point to the {what} itself.") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CmrError(f"{p} cannot be read (permission denied); check its permissions.") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise CmrError(f"The path {str(p)[:80]}… is too long for this system; move the {what} to a shorter path.") from None
        raise CmrError(f"{p} does not exist; check the path (the {what} may have moved or been renamed).") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = "a pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise CmrError(f"{p} is {kind}, not a regular file or folder; give an image file or a dataset folder.")
    return p


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def stem(path: Path) -> str:
    """File name without any of the known image suffixes."""
    name = path.name
    for s in NIFTI_SUFFIXES + SITK_SUFFIXES + HDF5_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def is_dicom_file(path: Path) -> bool:
    if has_suffix(path, DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def affine_xyz_to_zyx(affine_xyz: np.ndarray) -> np.ndarray:
    return np.asarray(affine_xyz, dtype=np.float64) @ SWAP_XYZ


def affine_zyx_to_xyz(affine_zyx: np.ndarray) -> np.ndarray:
    return np.asarray(affine_zyx, dtype=np.float64) @ SWAP_XYZ


def sitk_geometry_to_affine(origin, spacing, direction) -> np.ndarray:
    """SimpleITK (LPS, x-first) geometry -> our (z, y, x) RAS affine."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine_xyz_to_zyx(LPS_TO_RAS @ a)


def affine_to_sitk_geometry(affine_zyx: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    a = LPS_TO_RAS @ affine_zyx_to_xyz(affine_zyx)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    return list(a[:3, 3]), list(spacing), list(direction.ravel())


def orthonormal_affine(affine_zyx: np.ndarray, shape_zyx: tuple[int, ...] | None = None) -> tuple[np.ndarray, dict]:
    """The (z, y, x) affine with its direction made orthonormal, and by how much that moved it.

    The direction (the columns divided by their lengths, the voxel sizes) is replaced by its nearest
    orthonormal matrix (the polar factor, from the SVD ``U Vᵀ``), which keeps its handedness; the voxel
    sizes and the origin stay. ITK (SimpleITK, ITK-SNAP, nnU-Net's reader) refuses directions that are not
    orthonormal, and a NIfTI qform can only hold an orthonormal one. ``info``: ``max_cosine_change`` (the
    largest change of a direction cosine), ``max_angle_deg`` (the largest rotation of an axis) and, with
    ``shape_zyx``, ``max_shift_mm`` (the largest displacement of a corner voxel's centre).
    """
    a = np.asarray(affine_zyx, dtype=np.float64)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(a)) or np.any(spacing <= 0):
        raise CmrError("The geometry holds NaN or a zero-length axis, so no orthonormal direction can be made from it.")
    d = m / spacing
    u, _, vt = np.linalg.svd(d)
    r = u @ vt
    out = a.copy()
    out[:3, :3] = r * spacing
    cos = np.clip(np.sum(d * r, axis=0) / np.linalg.norm(d, axis=0), -1.0, 1.0)
    info = {"max_cosine_change": float(np.abs(r - d).max()), "max_angle_deg": float(np.degrees(np.arccos(cos)).max())}
    if shape_zyx is not None:
        n = np.asarray(shape_zyx, dtype=np.float64) - 1
        corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
        info["max_shift_mm"] = float(np.linalg.norm((corners @ (out - a).T)[:, :3], axis=1).max())
    return out, info


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (same suffix); rename it onto ``dest`` on success.

    Nothing already at ``dest`` is touched unless the write completes.
    """
    dest = Path(dest)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CmrError(f"Cannot create the folder {parent} ({exc.strerror}); choose a folder you can write to.") from exc
    suffix = "".join(dest.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name.split('.')[0]}.", suffix=".tmp" + suffix, dir=parent)
    except OSError as exc:
        raise CmrError(f"Cannot write in {parent} ({exc.strerror}); choose a folder you can write to.") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def pick_frame(path: Path, n: int, frame: int | None, what: str = "a 4D cine with {n} frames") -> int:
    """Validate the chosen time frame of an n-frame cine; one frame needs no choice."""
    if n == 1 and frame in (None, 0):
        return 0
    if frame is None:
        raise CmrError(
            f"{path} is {what.format(n=n)}, but a 3D volume is needed here; choose one with --frame (0–{n - 1})."
        )
    if not 0 <= frame < n:
        raise CmrError(f"Frame {frame} is out of range for {path}, which has frames 0–{n - 1}.")
    return int(frame)


def jsonable(obj: Any) -> Any:
    """Plain JSON types for sidecars and cards: numpy scalars and arrays become numbers and
    lists, paths strings, and NaN or infinity null (so the file stays strict JSON)."""
    if isinstance(obj, dict):
        return {jsonable(str(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return jsonable(str(obj))
    if isinstance(obj, str):
        # a file name that is not valid UTF-8 holds lone surrogates: keep the text writable as UTF-8 JSON
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            try:
                return obj.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            except UnicodeEncodeError:
                return obj.encode("utf-8", "replace").decode("utf-8")
    return obj

"""Checks every reader makes, so that a bad file gets one sentence and an odd one a warning.

* **Limits from the header, before any pixel is read**: the number of dimensions, the size of every
  axis (:data:`MAX_DIM`), the voxel count of the one volume that will be held in memory
  (:data:`MAX_VOXELS`) and the pixel type (numbers only: no RGB, no complex values).
* **Complete files**: a gzip stream is decompressed once to the end (without keeping the data) so
  that a file cut short is refused, and one whose data is whole but whose gzip trailer (CRC and
  length) is missing is read with a warning.
* **Plausible geometry**: an affine with NaN, a zero or collinear axis, or a voxel size outside
  :data:`IN_PLANE_MM` / :data:`SLICE_MM` is not used: the spacing becomes *unknown* (as for the
  ACDC HDF5 files) and the user can give it with ``--spacing``.
* **Finite pixels**: NaN and infinite image values are replaced, with a warning that says by what.

Whatever is assumed is said once with :class:`~cmrstudio.errors.CmrWarning` and recorded in the
reader's metadata under ``"assumptions"``, which becomes ``case.source["assumptions"]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import threading
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from cmrstudio.errors import CmrError, CmrWarning

MAX_VOXELS = 1 << 28  # one 3D volume held in memory: 268 M voxels (1 GiB as float32); a 512×512×30 cine frame is 8 M
MAX_DIM = 1 << 15  # any one axis: 32768
IN_PLANE_MM = (0.05, 20.0)  # plausible pixel size (rows, columns) of a cardiac MR image
SLICE_MM = (0.05, 100.0)  # plausible distance between slices
_GZIP_SLACK = 16 << 20  # bytes decompressed past the declared end before the integrity scan stops looking


def note(meta: dict | None, sentence: str) -> None:
    """Say what was assumed (a :class:`CmrWarning`) and record it in ``meta["assumptions"]``."""
    if meta is not None:
        meta.setdefault("assumptions", []).append(sentence)
    warnings.warn(sentence, CmrWarning, stacklevel=3)


def _dims(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def check_shape(path: Path | str, shape: Sequence[int], what: str = "image") -> None:
    """Refuse a declared array (any axis order) with an empty axis, an axis over :data:`MAX_DIM`
    or more than :data:`MAX_VOXELS` voxels, before anything is allocated."""
    dims = [int(s) for s in shape]
    if any(s < 1 for s in dims):
        raise CmrError(f"{path} declares a {_dims(dims)} {what} (an axis of size {min(dims)}); its header is damaged: "
                       "export or copy the file again.")
    n = math.prod(dims)
    if max(dims, default=1) > MAX_DIM or n > MAX_VOXELS:
        raise CmrError(f"{path} declares a {_dims(dims)} {what} ({n:,} voxels), more than cmrstudio reads at once "
                       f"({MAX_VOXELS:,} voxels, {MAX_DIM:,} per axis); its header is damaged or it is not one cardiac "
                       "volume: check it in another viewer, or crop it.")


def check_dtype(path: Path | str, dtype, what: str = "image") -> np.dtype:
    """Only plain numbers are pixels: refuse colour (RGB), complex and non-numeric types by name."""
    dt = np.dtype(dtype)
    if dt.fields:
        names = "".join(dt.names or ()).upper()
        if names in ("RGB", "RGBA"):
            raise CmrError(f"{path} holds {names} colour pixels, not one intensity per pixel; give a single-channel "
                           "(greyscale) image, e.g. convert it to greyscale first.")
        raise CmrError(f"{path} holds compound pixels ({', '.join(dt.names or ())}), not one number per pixel; "
                       "give a single-channel image.")
    if dt.kind == "c":
        raise CmrError(f"{path} holds complex values ({dt.name}), which cmrstudio cannot show as an MR image; "
                       "give the magnitude image (the absolute value) instead.")
    if dt.kind not in "biuf":
        raise CmrError(f"{path} holds {what} values of type {dt.name!s}, not numbers; give a numeric image.")
    return dt


# -- gzip -------------------------------------------------------------------------------------------------------

def gzip_check(path: Path, needed: int, offset: int = 0, meta: dict | None = None, chunk: int = 1 << 20,
               zlib_format: bool = False) -> None:
    """Decompress the gzip stream of ``path`` (from ``offset``) to its end without keeping it.

    ``needed`` is how many decompressed bytes the header declares. Raises :class:`CmrError` when the
    stream is cut short of them or damaged; warns (and notes in ``meta``) when the data is whole but the
    gzip trailer (CRC-32 and length) is missing, so the file cannot be verified. ``zlib_format``: a zlib
    stream (MetaImage's compressed data, Adler-32 trailer) instead of gzip.
    """
    total = 0
    wbits = zlib.MAX_WBITS if zlib_format else 16 + zlib.MAX_WBITS
    kind = "compressed" if zlib_format else "gzip"
    d = zlib.decompressobj(wbits)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise CmrError(f"{path} cannot be opened ({exc.strerror or exc}); check its permissions.") from None
    with fh:
        fh.seek(offset)
        pending = b""
        while True:
            if not pending:
                pending = fh.read(chunk)
                if not pending:
                    break
            try:
                out = d.decompress(pending, chunk * 8)
            except zlib.error as exc:
                if "incorrect data check" in str(exc) or "incorrect length check" in str(exc):
                    raise CmrError(f"{path} fails the checksum of its {kind} data (the trailer does not match the data); "
                                   "the file is damaged: copy or export it again.") from None
                why = str(exc).split(":")[-1].strip()
                raise CmrError(f"{path} is damaged: its {kind} data cannot be decompressed ({why}); copy or export it again.") from None
            total += len(out)
            if total > needed + _GZIP_SLACK:
                return  # far more than declared: what is declared is there
            if d.eof:
                rest = d.unused_data
                if not zlib_format and rest.startswith(b"\x1f\x8b"):  # another gzip member follows
                    d = zlib.decompressobj(wbits)
                    pending = rest
                    continue
                break  # bytes after the stream are not part of the image
            pending = d.unconsumed_tail
    if total < needed:
        raise CmrError(f"{path} is truncated: it holds {total:,} of the {needed:,} bytes its header declares; "
                       "copy or export it again.")
    if not d.eof:
        note(meta, f"{path} ends before the trailer of its {kind} data (the checksum that verifies it): its image data is "
                   "complete and was read, but could not be checked; copy the file again to be sure.")


# -- geometry ---------------------------------------------------------------------------------------------------

def _mm(v: float) -> str:
    return f"{v:.3g}"


def sane_affine(path: Path | str, affine_zyx, shape_zyx: Sequence[int], meta: dict | None = None,
                source: str = "header", quiet: bool = False) -> np.ndarray | None:
    """The (z, y, x) affine if it is usable, else ``None`` (spacing unknown) with a warning naming why.

    A single slice without a slice thickness gets 1 mm along its normal (said in a warning).
    ``quiet`` only tests: nothing is said or noted.
    """
    if quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sane_affine(path, affine_zyx, shape_zyx, None, source)
    hint = "spacing is treated as unknown: give --spacing z,y,x (mm) if you know it."
    try:
        a = np.array(affine_zyx, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (4, 4) or not np.all(np.isfinite(a)):
        note(meta, f"{path} has no usable geometry (its {source} holds NaN or infinite values); {hint}")
        return None
    cols = a[:3, :3]
    sp = np.linalg.norm(cols, axis=0)  # (z, y, x)
    if sp[0] == 0 and int(shape_zyx[0]) == 1 and sp[1] > 0 and sp[2] > 0:
        normal = np.cross(cols[:, 1], cols[:, 2])
        if np.linalg.norm(normal) > 0:
            a[:3, 0] = normal / np.linalg.norm(normal)
            cols, sp = a[:3, :3], np.linalg.norm(a[:3, :3], axis=0)
            note(meta, f"{path} is a single slice with no slice thickness in its {source}; 1 mm is assumed along its normal.")
    if np.any(sp == 0):
        note(meta, f"{path} has a degenerate geometry: its {source} gives a voxel size of "
                   f"{' × '.join(_mm(s) for s in sp)} mm (slice × row × column), with a zero axis; {hint}")
        return None
    if abs(np.linalg.det(cols)) < 1e-6 * float(np.prod(sp)):
        note(meta, f"{path} has a degenerate geometry: two axes of its {source} point the same way, so it describes "
                   f"no volume; {hint}")
        return None
    lo, hi = IN_PLANE_MM
    zlo, zhi = SLICE_MM
    if not (lo <= sp[1] <= hi and lo <= sp[2] <= hi and zlo <= sp[0] <= zhi):
        note(meta, f"{path} gives an implausible voxel size of {' × '.join(_mm(s) for s in sp)} mm (slice × row × column; "
                   f"expected {lo:g}–{hi:g} mm in-plane and {zlo:g}–{zhi:g} mm between slices); {hint}")
        return None
    return a


# -- pixels -----------------------------------------------------------------------------------------------------

_F32_MAX = float(np.finfo(np.float32).max)


def finite_image(path: Path | str, arr: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """Replace NaN and infinite image values (and values too large for float32), with a warning saying how."""
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        return a
    wide = a.dtype.itemsize > 4
    with np.errstate(invalid="ignore", over="ignore"):
        fin = np.isfinite(a)
        if wide:
            fin &= np.abs(np.where(fin, a, 0)) <= _F32_MAX
        n_bad = int(a.size - np.count_nonzero(fin))
        if n_bad == 0:
            return a
        if n_bad == a.size:
            raise CmrError(f"{path} holds no finite pixel value (every pixel is NaN, infinite or too large); "
                           "it is not a usable image: export it again from the scanner or the tool that made it.")
        lo, hi = float(a[fin].min()), float(a[fin].max())
        nan = np.isnan(a)
        low = ~fin & (nan | (a < 0))
        out = np.where(fin, a, 0).astype(np.float32 if wide else a.dtype)
        out[low] = lo
        out[~fin & ~low] = hi
    n_nan = int(nan.sum())
    n_low, n_high = int(low.sum()) - n_nan, n_bad - int(low.sum())
    parts = [f"{n_nan:,} NaN"] if n_nan else []
    if n_bad > n_nan:
        parts.append(f"{n_bad - n_nan:,} infinite" + (" or out-of-range" if wide else ""))
    how = []
    if n_nan or n_low:
        how.append(f"{'NaN' if n_nan else ''}{' and ' if n_nan and n_low else ''}{'negative ones' if n_low else ''} by the image's lowest finite value ({lo:g})")
    if n_high:
        how.append(f"positive ones by its highest ({hi:g})")
    note(meta, f"{path} holds {' and '.join(parts)} pixel value{'s' if n_bad != 1 else ''} ({n_bad / a.size:.2%} of the image); "
               f"{'it was' if n_bad == 1 else 'they were'} replaced: {', '.join(how)}.")
    return out


# -- libraries that print to the C stderr --------------------------------------------------------------------------

_STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def captured_stderr() -> Iterator[dict]:
    """Catch what C++ libraries (ITK's MetaIO, GDCM) print straight to file descriptor 2 while they run;
    it is available as ``result["text"]`` after the block, so a reason can go into one sentence."""
    result = {"text": ""}
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
            tmp = tempfile.TemporaryFile()
        except OSError:
            yield result
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield result
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            try:
                tmp.seek(0)
                result["text"] = tmp.read(1 << 16).decode("utf-8", errors="replace")
            finally:
                tmp.close()


def reason(exc: BaseException, printed: str = "") -> str:
    """One short line saying why a library refused a file: the last meaningful line of its error
    (or, when that is a bare system error, of what it printed)."""
    def lines(text: str) -> list[str]:
        out = []
        for ln in text.splitlines():
            ln = ln.strip().removeprefix("sitk::ERROR:").strip()
            if ln and not ln.startswith(("itk::", "Location:", "File:", "Line:", "Description:")):
                out.append(ln)
        return out

    itk = re.findall(r"ITK ERROR: [^:]*\):\s*(.+)", str(exc))  # "ITK ERROR: Image(0x..): Bad direction, ..."
    own = lines(str(exc))
    best = itk[-1].strip() if itk else own[-1] if own else type(exc).__name__
    if best.startswith("Reason:") or "No such file or directory" in best:
        extra = lines(printed)
        best = extra[0] if extra else best
    best = best.removeprefix("Reason:").strip().rstrip(".")
    return best[:160]


def quietly(fn: Callable, *args, **kw):
    """Run a library call with its C-level chatter caught; returns (result, None) or (None, (exc, printed))."""
    with captured_stderr() as printed:
        try:
            res = fn(*args, **kw)
            failure = None
        except RuntimeError as exc:
            res, failure = None, exc
    if failure is not None:
        return None, (failure, printed["text"])
    return res, None

"""The synthesis frame: a square, heart-centred crop resampled to a fixed size and
spacing, with intensities normalised per volume, and its exact inverse.

Defaults: 128×128 pixels at 1.25 mm (a 160 mm field of view) for the live path;
256×256 at 0.625 mm for high-fidelity work. 1.25 mm is close to the native in-plane
resolution of ACDC and M&Ms (1.2–1.7 mm), and 160 mm holds the LV and RV of a dilated
heart. When a scan's spacing is unknown (the ACDC HDF5 files), no millimetres are
invented: the field of view is ``FOV_HEART_FACTOR`` times the heart's largest extent
in pixels (or the whole image without a mask), and the frame records
``spacing_mm = None``.

Intensity: ``(x - p0.5) / (p99.5 - p0.5)`` clipped to [0, 1], percentiles over the
whole volume. Everything needed to go back is kept in :class:`Frame` (JSON-able).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from cmrstudio.case import Case
from cmrstudio.errors import CmrError

LIVE_SIZE, LIVE_SPACING_MM = 128, 1.25
HQ_SIZE, HQ_SPACING_MM = 256, 0.625
PERCENTILES = (0.5, 99.5)
FOV_HEART_FACTOR = 1.6
MAX_FRAME_SIZE = 4096  # a frame's side in pixels: larger is a damaged record, not a synthesis frame


@dataclass
class Frame:
    size: int
    native_shape: tuple[int, int]  # (rows, cols) of the scan
    origin: tuple[float, float]  # native (row, col) of frame pixel (0, 0)
    step: tuple[float, float]  # native pixels per frame pixel (row, col)
    spacing_mm: float | None  # frame pixel size, None when the scan's spacing is unknown
    intensity: tuple[float, float] | None = None  # (low, high) mapped to (0, 1)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("native_shape", "origin", "step", "intensity"):
            if d[k] is not None:
                d[k] = [float(v) if k != "native_shape" else int(v) for v in d[k]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Frame":
        """Read a frame record (from a sidecar, perhaps hand-edited); anything that is not a usable frame is refused
        in one sentence: sizes whole and positive, steps positive, every number finite, intensity low < high."""
        def bad(why: str) -> CmrError:
            return CmrError(f"The frame record {str(d)[:200]} is malformed ({why}); it cannot be put back into the scan.")

        try:
            if not isinstance(d, dict):
                raise TypeError(f"a {type(d).__name__}, not an object")
            fr = cls(
                size=_whole(d["size"]),
                native_shape=tuple(_whole(v) for v in d["native_shape"]),
                origin=tuple(float(v) for v in d["origin"]),
                step=tuple(float(v) for v in d["step"]),
                spacing_mm=None if d.get("spacing_mm") is None else float(d["spacing_mm"]),
                intensity=None if d.get("intensity") is None else tuple(float(v) for v in d["intensity"]),
                extra=dict(d.get("extra") or {}),
            )
        except KeyError as exc:
            raise bad(f"no {exc.args[0]}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise bad(str(exc)) from None
        if not 1 <= fr.size <= MAX_FRAME_SIZE:
            raise bad(f"size {fr.size} is not 1–{MAX_FRAME_SIZE}")
        if len(fr.native_shape) != 2 or min(fr.native_shape) < 1:
            raise bad("native_shape must be two positive whole numbers")
        if len(fr.origin) != 2 or not all(np.isfinite(fr.origin)):
            raise bad("origin must be two finite numbers")
        if len(fr.step) != 2 or not all(np.isfinite(fr.step)) or min(fr.step) <= 0:
            raise bad("step must be two positive numbers")
        if fr.spacing_mm is not None and not (np.isfinite(fr.spacing_mm) and fr.spacing_mm > 0):
            raise bad("spacing_mm must be a positive number or null")
        if fr.intensity is not None and (len(fr.intensity) != 2 or not all(np.isfinite(fr.intensity)) or fr.intensity[1] <= fr.intensity[0]):
            raise bad("intensity must be two finite numbers, low then high")
        return fr

    def coords(self) -> np.ndarray:
        """Native (row, col) coordinates of every frame pixel: array (2, N, N), read-only, cached."""
        return _grid(self.size, self.size, tuple(self.origin), tuple(self.step), forward=True)

    def native_coords(self) -> np.ndarray:
        """Frame (row, col) coordinates of every native pixel: array (2, Y, X), read-only, cached."""
        return _grid(*self.native_shape, tuple(self.origin), tuple(self.step), forward=False)


def _whole(v) -> int:
    """A whole number from a record: 5 or 5.0, not True, 5.5, NaN or text."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not float(v).is_integer():
        raise ValueError(f"{v!r} is not a whole number")
    return int(v)


@lru_cache(maxsize=16)
def _grid(ny: int, nx: int, origin: tuple[float, float], step: tuple[float, float], forward: bool) -> np.ndarray:
    """Sampling grids are reused for every slice and every live edit in the same frame."""
    r, c = np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64)
    if forward:
        r, c = origin[0] + step[0] * r, origin[1] + step[1] * c
    else:
        r, c = (r - origin[0]) / step[0], (c - origin[1]) / step[1]
    g = np.stack(np.meshgrid(r, c, indexing="ij"))
    g.flags.writeable = False
    return g


@dataclass
class FramedCase:
    image: np.ndarray | None  # (Z, N, N) float32 in [0, 1]
    mask: np.ndarray | None  # (Z, N, N) uint8 canonical
    frame: Frame
    vendor: str = "unknown"
    phase: str | None = None
    case_id: str = "case"


def heart_centre(mask: np.ndarray) -> tuple[float, float] | None:
    pts = np.argwhere(mask > 0)
    if pts.size == 0:
        return None
    return float(pts[:, 1].mean()), float(pts[:, 2].mean())


def robust_range(image: np.ndarray, percentiles=PERCENTILES) -> tuple[float, float]:
    lo, hi = np.percentile(image, percentiles)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise CmrError("The image holds non-finite values (NaN or infinity); fix the file before synthesis.")
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def make_frame(
    case: Case,
    size: int = LIVE_SIZE,
    spacing_mm: float | None = LIVE_SPACING_MM,
    step: float | None = None,
    centre: tuple[float, float] | None = None,
) -> Frame:
    """Choose the frame for a case (same in-plane frame for all its slices).

    ``step`` (native pixels per frame pixel) overrides the spacing logic: ``step=1``
    crops at native resolution, which :func:`from_frame` inverts exactly.
    """
    if size < 8:
        raise CmrError(f"Frame size {size} is too small; use at least 8 pixels (128 is the default).")
    if size > MAX_FRAME_SIZE:
        raise CmrError(f"Frame size {size} is too large; use at most {MAX_FRAME_SIZE} pixels (128 is the default).")
    if step is not None and not (np.isfinite(step) and step > 0):
        raise CmrError(f"Frame step {step} must be a positive number of native pixels per frame pixel.")
    if spacing_mm is not None and not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise CmrError(f"Frame spacing {spacing_mm} mm must be a positive number (or None to size the frame to the heart).")
    if centre is not None and not all(np.isfinite(centre)):
        raise CmrError(f"Frame centre {centre} must be two finite numbers (row, column).")
    _, ny, nx = case.shape
    if centre is None:
        centre = heart_centre(case.mask) if case.mask is not None else None
    if centre is None:
        centre = ((ny - 1) / 2.0, (nx - 1) / 2.0)
    sp = case.spacing
    out_spacing: float | None
    if step is not None:
        st = (float(step), float(step))
        out_spacing = float(step * (sp[1] + sp[2]) / 2) if sp else None
    elif sp is not None and spacing_mm is not None:
        st = (spacing_mm / sp[1], spacing_mm / sp[2])
        out_spacing = float(spacing_mm)
    else:
        if case.mask is not None and (case.mask > 0).any():
            pts = np.argwhere(case.mask > 0)
            extent = float(max(np.ptp(pts[:, 1]), np.ptp(pts[:, 2])) + 1)
            fov = FOV_HEART_FACTOR * extent
        else:
            fov = float(min(ny, nx))
        st = (fov / size, fov / size)
        out_spacing = None
    origin = (centre[0] - st[0] * (size - 1) / 2.0, centre[1] - st[1] * (size - 1) / 2.0)
    # Whole-pixel origin: with step 1 the crop is then an exact copy of native pixels.
    origin = (float(np.round(origin[0])), float(np.round(origin[1])))
    intensity = robust_range(case.image) if case.image is not None else None
    extra = {"spacing_known": sp is not None, "centre": [float(centre[0]), float(centre[1])]}
    return Frame(size, (ny, nx), origin, st, out_spacing, intensity, extra)


def _resample(arr2d: np.ndarray, coords: np.ndarray, order: int, cval: float = 0.0) -> np.ndarray:
    return ndimage.map_coordinates(arr2d, coords, order=order, mode="constant", cval=cval, prefilter=False)


def normalise(image: np.ndarray, frame: Frame) -> np.ndarray:
    lo, hi = frame.intensity if frame.intensity else (0.0, 1.0)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def denormalise(image: np.ndarray, frame: Frame) -> np.ndarray:
    lo, hi = frame.intensity if frame.intensity else (0.0, 1.0)
    return (np.asarray(image, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)


def to_frame(case: Case, frame: Frame | None = None, **kw) -> FramedCase:
    """Crop, resample and normalise a case into its synthesis frame."""
    frame = frame or make_frame(case, **kw)
    coords = frame.coords()
    image = mask = None
    if case.image is not None:
        img = normalise(case.image, frame)
        sigma = [max(0.0, (s - 1.0) / 2.0) for s in frame.step]  # anti-alias when shrinking
        out = []
        for sl in img:
            if max(sigma) > 0:
                sl = ndimage.gaussian_filter(sl, sigma)
            out.append(_resample(sl, coords, order=1))
        image = np.stack(out).astype(np.float32)
    if case.mask is not None:
        mask = frame_mask(case.mask, frame)
    return FramedCase(image, mask, frame, case.vendor, case.phase, case.case_id)


def frame_mask(mask: np.ndarray, frame: Frame) -> np.ndarray:
    """A native mask slice (Y, X) or volume (Z, Y, X) into the frame (nearest neighbour, 0 outside the scan)."""
    m = np.asarray(mask)
    if m.shape[-2:] != tuple(frame.native_shape):
        raise CmrError(f"The mask is {m.shape[-2]}×{m.shape[-1]}, but its frame was made for {frame.native_shape[0]}×{frame.native_shape[1]}.")
    idx = _nearest_index(tuple(frame.native_shape), frame.size, tuple(frame.origin), tuple(frame.step))
    flat = m.reshape(*m.shape[:-2], -1).astype(np.uint8, copy=False)
    padded = np.concatenate([np.zeros(flat.shape[:-1] + (1,), np.uint8), flat], axis=-1)
    return padded[..., idx]


@lru_cache(maxsize=16)
def _nearest_index(native_shape: tuple[int, int], size: int, origin: tuple[float, float], step: tuple[float, float]) -> np.ndarray:
    """(N, N) index into a native slice, flattened with a 0 put in front, of the pixel nearest each frame pixel (0: outside
    the scan). Made once per frame by resampling the pixels' own numbers with the same nearest-neighbour rule as images, so
    a live edit costs one lookup instead of a resampling of the slice."""
    ny, nx = native_shape
    numbers = np.arange(1, ny * nx + 1, dtype=np.float64).reshape(ny, nx)
    coords = _grid(size, size, origin, step, forward=True)
    idx = np.rint(_resample(numbers, coords, order=0)).astype(np.intp)
    idx.flags.writeable = False
    return idx


def native_box(frame: Frame, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    """The native rows and columns whose frame coordinates fall in the frame box (r0, r1, c0, c1), end exclusive, as
    slices of the scan's grid: the native pixels a change inside that box can reach."""
    out = []
    for lo, hi, o, st, n in zip(box[::2], box[1::2], frame.origin, frame.step, frame.native_shape):
        a = int(np.ceil(o + st * (lo - 0.5) - 1e-9))
        b = int(np.floor(o + st * (hi - 0.5) + 1e-9)) + 1
        out.append(slice(min(max(a, 0), n), min(max(b, 0), n)))
    return out[0], out[1]


def from_frame_box(arr: np.ndarray, frame: Frame, box: tuple[int, int, int, int], kind: str = "image") -> tuple[tuple[slice, slice], np.ndarray]:
    """Only the native pixels of a frame box (r0, r1, c0, c1) of a framed slice (N×N): (their slices in the scan's grid,
    their values), the same values :func:`from_frame` gives there. A live edit that changed a window of the frame
    resamples that window back, not the whole scan."""
    rows, cols = native_box(frame, box)
    coords = frame.native_coords()[:, rows, cols]
    a = np.asarray(arr)
    if kind == "image":
        vals = denormalise(ndimage.map_coordinates(a.astype(np.float32), coords, order=1, mode="nearest", prefilter=False), frame)
    else:
        vals = ndimage.map_coordinates(a, coords, order=0, mode="nearest", prefilter=False).astype(np.uint8)
    return (rows, cols), vals


def from_frame(arr: np.ndarray, frame: Frame, kind: str = "image", into: np.ndarray | None = None) -> np.ndarray:
    """Put a framed image or mask (N×N or Z×N×N) back into the scan's own pixel grid.

    Images are interpolated linearly and de-normalised; masks use nearest neighbour.
    Native pixels outside the frame keep the values of ``into`` (zeros without it).
    """
    if kind not in ("image", "mask"):
        raise CmrError(f"kind must be 'image' or 'mask', not {kind!r}.")
    a = np.asarray(arr)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[None]
    if a.shape[1:] != (frame.size, frame.size):
        raise CmrError(f"The framed array has shape {a.shape[1:]}, but the frame is {frame.size}×{frame.size}.")
    whole = (0, frame.size, 0, frame.size)
    out = []
    for z, sl in enumerate(a):
        (rows, cols), vals = from_frame_box(sl, frame, whole, kind)
        base = np.zeros(frame.native_shape, dtype=vals.dtype) if into is None else np.array(into[z] if np.ndim(into) == 3 else into, dtype=vals.dtype)
        base[rows, cols] = vals
        out.append(base)
    res = np.stack(out)
    if kind == "mask":
        res = res.astype(np.uint8)
    return res[0] if squeeze else res

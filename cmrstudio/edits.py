"""Quick mask edits that radiologists ask for: a dilated LV, a thicker wall, a bigger RV, ...

Every function takes and returns numpy label maps in the canonical labels (0 background,
1 LV blood pool, 2 LV myocardium, 3 RV blood pool) and never modifies its input. Spacing is
given in mm as ``(y, x)`` for a slice or ``(z, y, x)`` for a volume; ``None`` means the
spacing is unknown, and then every amount called "mm" is taken in pixels instead.

Growth and shrinkage are exact Euclidean distances in mm (``distance_transform_edt`` with the
pixel spacing), so anisotropic pixels grow by the same millimetres along rows and columns.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage import morphology

from cmrstudio.anatomy import BG, LV, MYO, RV, SHORT_NAMES, remap, template_mask, wall_thickness_px
from cmrstudio.errors import CmrError

EDITABLE = (LV, MYO, RV)


# -- checks ----------------------------------------------------------------------------------------

def _labels(mask, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != ndim:
        shape = "slice (rows, columns)" if ndim == 2 else "volume (slices, rows, columns)"
        raise CmrError(f"{what} has {arr.ndim} dimensions; this edit needs a {ndim}D mask {shape}.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return remap(arr, "canonical", where=what)  # a new uint8 array; unknown values give a sentence


def _spacing(spacing, n: int, what: str = "spacing") -> tuple[float, ...] | None:
    if spacing is None:
        return None
    try:
        sp = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise CmrError(f"The {what} {spacing!r} is not {n} numbers in mm; give e.g. {(1.25,) * n} or None when unknown.") from None
    if len(sp) != n or not all(math.isfinite(v) and v > 0 for v in sp):
        raise CmrError(f"The {what} {spacing!r} must be {n} positive numbers in mm (or None when unknown).")
    return sp


def _amount(mm) -> float:
    try:
        v = float(mm)
    except (TypeError, ValueError):
        raise CmrError(f"The amount {mm!r} is not a number of mm; give e.g. 5 to grow or -3 to shrink.") from None
    if not math.isfinite(v):
        raise CmrError(f"The amount {mm!r} is not a finite number of mm; give e.g. 5 to grow or -3 to shrink.")
    return v


def _label(label) -> int:
    ok = isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)) and int(label) in EDITABLE
    if not ok:
        raise CmrError(f"Label {label!r} cannot be grown or shrunk; use LV (1), MYO (2) or RV (3).")
    return int(label)


# -- distances -------------------------------------------------------------------------------------

def _grow(region: np.ndarray, r: float, sampling) -> np.ndarray:
    """Pixels within ``r`` (mm, or px) of ``region``."""
    if not region.any() or region.all():
        return region.copy()
    return ndimage.distance_transform_edt(~region, sampling=sampling) <= r


def _shrink(region: np.ndarray, r: float, sampling) -> np.ndarray:
    """Pixels of ``region`` farther than ``r`` from any pixel outside it (the image edge is not a border)."""
    if not region.any() or region.all():
        return region.copy()
    return ndimage.distance_transform_edt(region, sampling=sampling) > r


def _name(label: int) -> str:
    return SHORT_NAMES[label]


# -- one slice -------------------------------------------------------------------------------------

def change_structure(mask2d, label: int, mm: float, spacing_yx=None) -> np.ndarray:
    """Grow (``mm`` > 0) or shrink (``mm`` < 0) one structure of a slice by that distance.

    ``spacing_yx`` is the pixel size (row, column) in mm; with None the spacing is unknown and
    ``mm`` is taken in pixels. The result is a new uint8 array; the input is left as it was.

    - LV (1): the cavity grows or shrinks and the myocardium moves with it, keeping its
      thickness (a dilated or a small LV): the new epicardium is the old one moved by ``mm``,
      the new cavity the old one moved by ``mm``, and the ring between them is myocardium.
      Growing turns RV pixels under the new epicardium into myocardium; shrinking gives the
      pixels outside the new epicardium back to background.
    - MYO (2): the wall thickens or thins outwards: the epicardium moves by ``mm``, the cavity
      stays. It grows into background and RV; thinning never removes the layer of myocardium
      that touches the cavity, so the ring stays closed.
    - RV (3): grows into background only (never over LV or MYO, and only into background
      connected to the RV); shrinks back to background.

    A label other than 1–3, a label absent from the slice, or a shrink that would remove the
    structure entirely gives a :class:`CmrError` sentence.
    """
    lab, amount = _label(label), _amount(mm)
    sp = _spacing(spacing_yx, 2, "pixel spacing (y, x)")
    m = _labels(mask2d, 2, "The mask slice")
    verb = {LV: ("grow", "shrink"), MYO: ("thicken", "thin"), RV: ("grow", "shrink")}[lab][amount < 0]
    present = m == lab
    if not present.any():
        raise CmrError(f"This slice has no {_name(lab)} to {verb}; paint it first.")
    if amount == 0:
        return m
    r, grow = abs(amount), amount > 0
    unit = "mm" if sp is not None else "px"
    lv, myo = m == LV, m == MYO
    out = m.copy()
    if lab == LV:
        epi = lv | myo
        if grow:
            new_epi = _grow(epi, r, sp)
            new_lv = _grow(lv, r, sp) & new_epi
        else:
            new_epi = _shrink(epi, r, sp)
            new_lv = _shrink(lv, r, sp)
            if not new_lv.any():
                raise CmrError(f"Shrinking the LV by {r:g} {unit} would remove it entirely; choose a smaller amount.")
            out[epi & ~new_epi] = BG
        out[new_epi] = MYO
        out[new_lv] = LV
    elif lab == MYO:
        epi = lv | myo
        if grow:
            out[_grow(epi, r, sp) & ~lv] = MYO
        else:
            keep = _shrink(epi, r, sp)
            # the innermost layer (touching the cavity) stays, so the ring never opens
            keep |= ndimage.binary_dilation(lv, structure=np.ones((3, 3), bool))
            gone = myo & ~keep
            if gone.sum() == myo.sum():
                raise CmrError(f"Thinning the wall by {r:g} {unit} would remove the myocardium entirely; choose a smaller amount.")
            out[gone] = BG
    else:  # RV
        if grow:
            reach = _grow(present, r, sp) & ((m == BG) | present)
            comps, _ = ndimage.label(reach, structure=np.ones((3, 3), bool))
            ids = np.unique(comps[present])
            out[np.isin(comps, ids[ids > 0])] = RV
        else:
            new_rv = _shrink(present, r, sp)
            if not new_rv.any():
                raise CmrError(f"Shrinking the RV by {r:g} {unit} would remove it entirely; choose a smaller amount.")
            out[present & ~new_rv] = BG
    return out


# -- volumes ---------------------------------------------------------------------------------------

def _slice_index(i, n: int, what: str) -> int:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise CmrError(f"{what} {i!r} is not a whole slice number; this volume has slices 0–{n - 1}.")
    if not 0 <= int(i) < n:
        raise CmrError(f"{what} {i!r} is out of range; this volume has slices 0–{n - 1}.")
    return int(i)


def change_volume(mask3d, label: int, mm: float, spacing_zyx=None, slices=None) -> np.ndarray:
    """:func:`change_structure` on every slice that holds ``label`` (or on the slice indices given).

    ``spacing_zyx`` is the voxel size (z, y, x) in mm (only y and x are used: the edit is
    in-plane); None means unknown, and ``mm`` is then taken in pixels.
    """
    lab, amount = _label(label), _amount(mm)
    sp = _spacing(spacing_zyx, 3, "voxel spacing (z, y, x)")
    m = _labels(mask3d, 3, "The mask volume")
    n = m.shape[0]
    if slices is None:
        idx = [z for z in range(n) if (m[z] == lab).any()]
        if not idx:
            raise CmrError(f"This volume has no {_name(lab)} on any slice; paint it first.")
    else:
        idx = sorted({_slice_index(z, n, "Slice") for z in np.atleast_1d(np.asarray(slices, dtype=object)).tolist()})
    out = m.copy()
    for z in idx:
        try:
            out[z] = change_structure(m[z], lab, amount, None if sp is None else sp[1:])
        except CmrError as exc:
            raise CmrError(f"Slice {z}: {exc.message}") from None
    return out


def copy_slice(mask3d, src: int, dst: int) -> np.ndarray:
    """A copy of the volume with slice ``src`` copied onto slice ``dst``."""
    m = _labels(mask3d, 3, "The mask volume")
    n = m.shape[0]
    s, d = _slice_index(src, n, "Source slice"), _slice_index(dst, n, "Target slice")
    m[d] = m[s]
    return m


# -- new masks -------------------------------------------------------------------------------------

def _resample_nearest(make, shape_yx, sy: float, sx: float) -> np.ndarray:
    """Draw with an isotropic helper at min(sy, sx), then sample the (sy, sx) grid (nearest), same centre."""
    h, w = shape_yx
    s = min(sy, sx)
    if sy == sx:
        return make((h, w), s, None)
    ch, cw = int(math.ceil((h - 1) * sy / s)) + 1, int(math.ceil((w - 1) * sx / s)) + 1
    fine = make((ch, cw), s, (sy / s, sx / s))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    fy, fx = (ch - 1) / 2.0 + (yy - cy) * sy / s, (cw - 1) / 2.0 + (xx - cx) * sx / s
    return ndimage.map_coordinates(fine, [fy, fx], order=0, mode="nearest").astype(np.uint8)


def template_volume(shape_zyx, spacing_zyx, lv_diameter_mm: float = 50, wall_mm: float = 9, rv_width_mm: float = 35,
                    rv_angle_deg: float = 180, centre=None, taper: bool = True) -> np.ndarray:
    """A parametric short-axis stack (base at slice 0, apex at the last): LV disc, myocardial ring, RV crescent.

    Each slice is :func:`cmrstudio.anatomy.template_mask`. With ``taper``, the last third of the
    slices (towards the apex) get a smaller LV (down to 40% of the diameter) and RV (down to
    25% of the width), the wall keeping its thickness, as in a real heart. ``centre`` is the
    (row, column) of the LV in pixels (default the image centre). ``spacing_zyx`` None:
    1 mm pixels are assumed.
    """
    try:
        nz, h, w = (int(v) for v in shape_zyx)
    except (TypeError, ValueError):
        raise CmrError(f"The shape {shape_zyx!r} is not three whole numbers (slices, rows, columns).") from None
    if nz < 1 or h < 8 or w < 8:
        raise CmrError(f"The shape {shape_zyx!r} is too small; give at least 1 slice of 8×8 pixels.")
    sp = _spacing(spacing_zyx, 3, "voxel spacing (z, y, x)") or (1.0, 1.0, 1.0)
    for name, v in (("lv_diameter_mm", lv_diameter_mm), ("wall_mm", wall_mm), ("rv_width_mm", rv_width_mm)):
        if not (isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0):
            raise CmrError(f"{name} = {v!r} must be a positive number of mm.")
    sy, sx = sp[1], sp[2]
    n_taper = nz // 3 if taper else 0
    out = np.zeros((nz, h, w), dtype=np.uint8)
    for z in range(nz):
        t = (z - (nz - n_taper) + 1) / n_taper if n_taper and z >= nz - n_taper else 0.0
        lv_d, rv_w = lv_diameter_mm * (1.0 - 0.6 * t), rv_width_mm * (1.0 - 0.75 * t)

        def make(shape, s, ratio, lv_d=lv_d, rv_w=rv_w):
            c = centre
            if c is not None and ratio is not None:  # centre given on the target grid -> the fine grid
                c = ((shape[0] - 1) / 2.0 + (c[0] - (h - 1) / 2.0) * ratio[0], (shape[1] - 1) / 2.0 + (c[1] - (w - 1) / 2.0) * ratio[1])
            return template_mask(shape, s, lv_d, wall_mm, rv_w, rv_angle_deg, c)

        out[z] = _resample_nearest(make, (h, w), sy, sx)
    return out


def phantom_mask(shape_yx, spacing_yx, phase: str = "ED", seed: int = 0) -> np.ndarray:
    """A phantom mid-ventricular slice mask (LV, MYO, RV), centred, sized in mm for this grid.

    Drawn by :func:`cmrstudio.data.phantom.phantom_slice` with anatomy drawn from ``seed``
    (LV radius 22–28 mm, wall 7–11 mm); ES has the smaller cavity and thicker wall. The
    phantom is drawn on a canvas of at least 240 mm, so the body outline never clips the
    heart, and sampled onto the requested grid. ``spacing_yx`` None: 1 mm pixels are assumed.
    """
    from cmrstudio.data.phantom import phantom_slice

    if phase not in ("ED", "ES"):
        raise CmrError(f"Phase {phase!r} is not one of ED, ES.")
    try:
        h, w = (int(v) for v in shape_yx)
    except (TypeError, ValueError):
        raise CmrError(f"The shape {shape_yx!r} is not two whole numbers (rows, columns).") from None
    if h < 8 or w < 8:
        raise CmrError(f"The shape {shape_yx!r} is too small; give at least 8×8 pixels.")
    sy, sx = _spacing(spacing_yx, 2, "pixel spacing (y, x)") or (1.0, 1.0)
    rng = np.random.default_rng(seed)
    params = dict(lv_radius_mm=rng.uniform(22, 28), wall_mm=rng.uniform(7, 11), rv_scale=rng.uniform(0.85, 1.15),
                  rot=rng.uniform(-0.25, 0.25), es_factor=rng.uniform(0.6, 0.72), dx=0.0, dy=0.0)
    s = min(sy, sx)
    ch = max(int(math.ceil((h - 1) * sy / s)) + 1, int(math.ceil(240.0 / s)))
    cw = max(int(math.ceil((w - 1) * sx / s)) + 1, int(math.ceil(240.0 / s)))
    ch, cw = ch + (ch - h) % 2, cw + (cw - w) % 2  # same parity: the centres line up
    _, canvas = phantom_slice(rng, (ch, cw), s, level=0.4, phase=phase, vendor="unknown", params=params)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fy = (ch - 1) / 2.0 + (yy - (h - 1) / 2.0) * sy / s
    fx = (cw - 1) / 2.0 + (xx - (w - 1) / 2.0) * sx / s
    return ndimage.map_coordinates(canvas, [fy, fx], order=0, mode="constant", cval=0).astype(np.uint8)


# -- measurements ----------------------------------------------------------------------------------

def wall_thickness_mm(mask2d, spacing_yx=None) -> np.ndarray:
    """Local wall thickness along the ring's medial axis, in mm (pixels when spacing is None).

    Isotropic pixels: :func:`cmrstudio.anatomy.wall_thickness_px` times the pixel size;
    anisotropic pixels: the same measure with the distance taken in mm.
    """
    m = _labels(mask2d, 2, "The mask slice")
    sp = _spacing(spacing_yx, 2, "pixel spacing (y, x)")
    if sp is None or sp[0] == sp[1]:
        return wall_thickness_px(m) * (1.0 if sp is None else sp[0])
    myo = m == MYO
    if myo.sum() < 5:
        return np.zeros(0)
    skel = morphology.skeletonize(myo)
    return 2.0 * ndimage.distance_transform_edt(myo, sampling=sp)[skel] if skel.any() else np.zeros(0)


def structure_sizes(mask2d, spacing_yx=None) -> dict:
    """Sizes of a slice's structures; None where a structure is absent.

    ``lv_diameter``: equivalent-circle diameter of the LV blood pool; ``wall_thickness`` and
    ``wall_thickness_median``: mean and median myocardial wall thickness; ``rv_area``: RV area.
    ``unit`` is "mm" (areas in mm²) or, when ``spacing_yx`` is None, "px" (areas in px²).
    """
    m = _labels(mask2d, 2, "The mask slice")
    sp = _spacing(spacing_yx, 2, "pixel spacing (y, x)")
    px_area = 1.0 if sp is None else sp[0] * sp[1]
    n_lv, n_rv = int((m == LV).sum()), int((m == RV).sum())
    t = wall_thickness_mm(m, sp)
    return {
        "unit": "px" if sp is None else "mm",
        "lv_diameter": float(2.0 * math.sqrt(n_lv * px_area / math.pi)) if n_lv else None,
        "wall_thickness": float(t.mean()) if t.size else None,
        "wall_thickness_median": float(np.median(t)) if t.size else None,
        "rv_area": float(n_rv * px_area) if n_rv else None,
    }



# -- interpolation between painted slices ---------------------------------------------------------

def _signed_distance(region: np.ndarray, sampling) -> np.ndarray:
    """Signed distance to the region's border in mm (px without spacing): negative inside, positive outside."""
    return ndimage.distance_transform_edt(~region, sampling=sampling) - ndimage.distance_transform_edt(region, sampling=sampling)


def interpolate_slices(mask3d, z0: int, z1: int, spacing_yx=None) -> np.ndarray:
    """A copy of the volume whose slices strictly between ``z0`` and ``z1`` are interpolated from those two.

    Shape-based interpolation, as ITK-SNAP and Slicer do it: signed distance maps (in mm with
    ``spacing_yx``, else in pixels) are blended linearly between the two key slices. The heart is
    interpolated as nested filled shapes, so the myocardial ring stays a closed ring whatever its
    radius: the epicardium (LV blood pool + myocardium, holes filled), the endocardium (LV blood pool)
    and the RV; the myocardium is the epicardium outside the blood pool, and where the RV and the LV
    meet the one deeper inside wins. A structure on one key slice only tapers off towards the other.
    The key slices are kept.
    """
    m = _labels(mask3d, 3, "The mask volume")
    n = m.shape[0]
    a, b = sorted((_slice_index(z0, n, "Slice"), _slice_index(z1, n, "Slice")))
    if b - a < 2:
        raise CmrError(f"Slices {a + 1} and {b + 1} have no slice between them to fill; pick two slices with a gap.")
    if not m[a].any() and not m[b].any():
        raise CmrError(f"Slices {a + 1} and {b + 1} are both empty; paint the heart on both, then interpolate.")
    sp = _spacing(spacing_yx, 2, "pixel spacing (y, x)")

    def shapes(sl):
        return {"epi": ndimage.binary_fill_holes((sl == LV) | (sl == MYO)), "lv": sl == LV, "rv": sl == RV}

    ka, kb = shapes(m[a]), shapes(m[b])
    sdf = {}
    for key in ("epi", "lv", "rv"):
        ra, rb = ka[key], kb[key]
        if not ra.any() and not rb.any():
            continue
        da = _signed_distance(ra, sp) if ra.any() else None
        db = _signed_distance(rb, sp) if rb.any() else None
        # an absent structure: as if one pixel outside everywhere, so the other one shrinks to nothing at the far key
        px = min(sp) if sp is not None else 1.0
        da = np.full(m.shape[1:], px) if da is None else da
        db = np.full(m.shape[1:], px) if db is None else db
        sdf[key] = (da, db)
    out = m.copy()
    far = np.full(m.shape[1:], np.inf)
    for z in range(a + 1, b):
        t = (z - a) / (b - a)
        d = {k: (1 - t) * va + t * vb for k, (va, vb) in sdf.items()}
        epi, lv, rv = d.get("epi", far), d.get("lv", far), d.get("rv", far)
        heart = (epi < 0) | (lv < 0)
        sl = np.zeros(m.shape[1:], np.uint8)
        sl[heart] = MYO
        sl[lv < 0] = LV
        sl[(rv < 0) & (~heart | (rv < np.minimum(epi, lv)))] = RV
        out[z] = sl
    return out


def interpolate_between(mask3d, keys, spacing_yx=None) -> tuple[np.ndarray, list[int]]:
    """Interpolate every gap between consecutive key slices (see :func:`interpolate_slices`).

    Returns the new volume and the slices that were filled. Adjacent keys have nothing between them.
    """
    m = _labels(mask3d, 3, "The mask volume")
    ks = sorted({_slice_index(k, m.shape[0], "Slice") for k in keys})
    if len(ks) < 2:
        raise CmrError("Interpolation needs two edited slices with a gap between them (e.g. 3 and 7); paint a second slice first.")
    out, filled = m, []
    for a, b in zip(ks, ks[1:]):
        if b - a >= 2 and (m[a].any() or m[b].any()):
            out = interpolate_slices(out, a, b, spacing_yx)
            filled += list(range(a + 1, b))
    if not filled:
        raise CmrError(f"The edited slices {', '.join(str(k + 1) for k in ks)} have no gap between them to fill; "
                       "paint two slices further apart.")
    return out, filled

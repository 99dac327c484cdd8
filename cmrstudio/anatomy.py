"""The canonical label scheme, dataset conventions and the checks a painter needs.

Canonical labels (the M&Ms order): 0 background, 1 LV blood pool, 2 LV myocardium,
3 RV blood pool. Every reader remaps to this scheme and records which convention
the file used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage import draw, morphology

from cmrstudio.errors import CmrError

BG, LV, MYO, RV = 0, 1, 2, 3
LABELS: dict[int, str] = {BG: "background", LV: "LV blood pool", MYO: "LV myocardium", RV: "RV blood pool"}
SHORT_NAMES: dict[int, str] = {BG: "BG", LV: "LV", MYO: "MYO", RV: "RV"}
# RGBA in 0..1; chosen to read well over greyscale MRI and for common colour-vision deficiencies.
COLOURS: dict[int, tuple[float, float, float, float]] = {
    BG: (0.0, 0.0, 0.0, 0.0),
    LV: (0.90, 0.25, 0.20, 1.0),   # red
    MYO: (0.30, 0.75, 0.35, 1.0),  # green
    RV: (0.25, 0.50, 0.95, 1.0),   # blue
}
VENDORS = ("siemens", "philips", "ge", "canon", "unknown")

# For each dataset convention: a lookup table file value -> canonical value.
CONVENTIONS: dict[str, dict[int, int]] = {
    "canonical": {0: BG, 1: LV, 2: MYO, 3: RV},
    "mnms": {0: BG, 1: LV, 2: MYO, 3: RV},
    "acdc": {0: BG, 1: RV, 2: MYO, 3: LV},
}


def vendor_from_manufacturer(text: str | None) -> str:
    """Map a DICOM Manufacturer string (or a free-form name) to a canonical vendor."""
    t = (text or "").lower()
    if "siemens" in t:
        return "siemens"
    if "philips" in t:
        return "philips"
    if t.startswith("ge") or "general electric" in t or "ge medical" in t:
        return "ge"
    if "canon" in t or "toshiba" in t:
        return "canon"
    return "unknown"


def label_counts(mask: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(mask, return_counts=True)
    return {SHORT_NAMES.get(int(v), f"unknown({int(v)})"): int(c) for v, c in zip(values, counts)}


def remap(mask: np.ndarray, convention: str, where: str = "the mask") -> np.ndarray:
    """Remap a label map from a dataset convention to canonical labels.

    Raises :class:`CmrError` naming the file and the offending value when the map
    holds a value the convention does not define.
    """
    if convention not in CONVENTIONS:
        raise CmrError(
            f"Unknown label convention {convention!r} for {where}; use one of {', '.join(CONVENTIONS)}."
        )
    arr = np.asarray(mask)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise CmrError(f"{where} holds non-integer values; a label map must hold whole numbers 0–3.")
    values = np.unique(arr).astype(np.int64)
    table = CONVENTIONS[convention]
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        raise CmrError(
            f"{where} holds label value {unknown[0]}"
            + (f" (and {len(unknown) - 1} more unknown values)" if len(unknown) > 1 else "")
            + f", which the {convention} convention (0–3) does not define; "
            "check the label convention or clean the mask."
        )
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for k, v in table.items():
        lut[k] = v
    return lut[arr.astype(np.int64)]


def rasterise_contours(
    shape: tuple[int, int],
    endocardium: np.ndarray | None,
    epicardium: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise LV contours (N×2 arrays of ``x y`` pixel coordinates) to a canonical 2D mask.

    The endocardial polygon becomes LV blood pool; the ring between it and the
    epicardial polygon becomes myocardium. Pixel centres inside a polygon are in.
    """
    out = np.zeros(shape, dtype=np.uint8)
    if epicardium is not None and len(epicardium) >= 3:
        rr, cc = draw.polygon(epicardium[:, 1], epicardium[:, 0], shape)
        out[rr, cc] = MYO
    if endocardium is not None and len(endocardium) >= 3:
        rr, cc = draw.polygon(endocardium[:, 1], endocardium[:, 0], shape)
        out[rr, cc] = LV
    return out


# ----------------------------------------------------------------------------- checks
@dataclass
class Finding:
    """One readable observation about a mask: severity is 'error', 'warning' or 'info'."""

    severity: str
    code: str
    message: str
    slice: int | None = None

    def __str__(self) -> str:
        where = f"slice {self.slice}: " if self.slice is not None else ""
        return f"[{self.severity}] {where}{self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


# Plausible compacted LV wall thickness in mm: thin infarct scars reach ~2 mm, severe
# hypertrophic cardiomyopathy ~30 mm and a little more.
WALL_MM_RANGE = (2.0, 35.0)


def enclosure(mask2d: np.ndarray) -> dict[str, float]:
    """Fractions that describe how the myocardial ring sits in one slice.

    ``lv_inside``: fraction of LV pixels inside the filled myocardial ring.
    ``rv_inside`` / ``rv_inside_px``: fraction and count of RV pixels inside it (should be 0).
    ``lv_rv_contact``: fraction of LV border pixels that touch RV directly.
    """
    myo = mask2d == MYO
    lv = mask2d == LV
    rv = mask2d == RV
    filled = ndimage.binary_fill_holes(myo)
    res = {"lv_inside": float("nan"), "rv_inside": float("nan"), "rv_inside_px": 0, "lv_rv_contact": 0.0}
    if lv.any():
        res["lv_inside"] = float((lv & filled).sum() / lv.sum())
        border = lv & ~ndimage.binary_erosion(lv)
        touch = border & ndimage.binary_dilation(rv)
        res["lv_rv_contact"] = float(touch.sum() / max(border.sum(), 1))
    if rv.any():
        res["rv_inside_px"] = int((rv & filled).sum())
        res["rv_inside"] = float(res["rv_inside_px"] / rv.sum())
    return res


def wall_thickness_px(mask2d: np.ndarray) -> np.ndarray:
    """Local myocardial wall thickness (pixels): twice the distance to the nearest
    non-myocardium pixel, sampled along the ring's medial axis (skeleton)."""
    myo = mask2d == MYO
    if myo.sum() < 5:
        return np.zeros(0)
    dist = ndimage.distance_transform_edt(myo)
    skel = morphology.skeletonize(myo)
    return 2.0 * dist[skel] if skel.any() else np.zeros(0)


def check_mask(mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> list[Finding]:
    """Check a canonical mask (2D or Z×Y×X) the way a painter would want it checked.

    Returns findings; never raises for anatomical problems. ``spacing`` is the
    in-plane pixel size (row, column) in mm at its last two entries, or None; one that is
    not two positive numbers counts as unknown.
    """
    arr = np.asarray(mask)
    if arr.ndim == 2:
        arr = arr[None]
    findings: list[Finding] = []
    values = [int(v) for v in np.unique(arr)]
    unknown = [v for v in values if v not in LABELS]
    if unknown:
        findings.append(
            Finding(
                "error",
                "unknown-label",
                f"label value {unknown[0]} is not LV (1), MYO (2) or RV (3); repaint or erase those pixels",
            )
        )
    px_mm = None
    if spacing is not None:
        try:
            sy, sx = float(spacing[-2]), float(spacing[-1])
        except (TypeError, ValueError, IndexError):
            sy = sx = float("nan")
        if np.isfinite(sy) and np.isfinite(sx) and sy > 0 and sx > 0:  # otherwise the spacing is unknown: no mm judged
            px_mm = (sy + sx) / 2.0
    multi = arr.shape[0] > 1
    for z in range(arr.shape[0]):
        sl = arr[z]
        zi = z if multi or np.ndim(mask) == 3 else None
        has = {lab: bool((sl == lab).any()) for lab in (LV, MYO, RV)}
        if not any(has.values()):
            continue
        enc = enclosure(sl)
        if has[LV] and not has[MYO]:
            findings.append(Finding("warning", "lv-without-myo", "LV blood pool has no myocardium around it", zi))
        elif has[LV] and enc["lv_inside"] < 0.9:
            findings.append(
                Finding(
                    "warning",
                    "ring-open",
                    f"the myocardial ring is open: only {enc['lv_inside']:.0%} of the LV lies inside it "
                    "(normal only at the base, where the outflow tract opens)",
                    zi,
                )
            )
        if has[RV] and enc["rv_inside_px"] >= 5:
            findings.append(
                Finding(
                    "warning",
                    "rv-inside-lv",
                    f"{enc['rv_inside_px']} RV pixels lie inside the LV myocardial ring; the RV belongs beside the LV",
                    zi,
                )
            )
        if enc["lv_rv_contact"] > 0.05:
            findings.append(
                Finding(
                    "warning",
                    "lv-touches-rv",
                    "the LV blood pool touches the RV directly; the septum (myocardium) should separate them",
                    zi,
                )
            )
        if has[MYO]:
            t = wall_thickness_px(sl)
            if t.size:
                med = float(np.median(t))
                if px_mm is None:
                    findings.append(
                        Finding("info", "wall-unknown-mm", f"median wall thickness {med:.1f} px (spacing unknown, no mm check)", zi)
                    )
                else:
                    mm = med * px_mm
                    lo, hi = WALL_MM_RANGE
                    if mm < lo or mm > hi:
                        findings.append(
                            Finding(
                                "warning",
                                "wall-thickness",
                                f"median wall thickness {mm:.1f} mm is outside the plausible {lo:g}–{hi:g} mm",
                                zi,
                            )
                        )
    return findings


def template_mask(
    shape: tuple[int, int],
    spacing_mm: float,
    lv_diameter_mm: float = 50.0,
    wall_mm: float = 9.0,
    rv_width_mm: float = 35.0,
    rv_angle_deg: float = 180.0,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """A parametric short-axis mask: LV disc, myocardial ring and an RV crescent.

    ``rv_angle_deg`` is where the RV sits around the LV, measured from the image's
    +x axis counter-clockwise as displayed (180° puts it on the image's left, the
    usual radiological view).
    """
    h, w = shape
    cy, cx = centre if centre is not None else ((h - 1) / 2.0, (w - 1) / 2.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r_lv = lv_diameter_mm / 2.0 / spacing_mm
    r_epi = r_lv + wall_mm / spacing_mm
    d = np.hypot(yy - cy, xx - cx)
    out = np.zeros(shape, dtype=np.uint8)
    # RV: an ellipse hugging the septum, minus the LV epicardium and a thin gap.
    a = np.deg2rad(rv_angle_deg)
    rv_w = rv_width_mm / spacing_mm
    ux, uy = np.cos(a), -np.sin(a)
    rcx, rcy = cx + ux * (r_epi + rv_w * 0.35), cy + uy * (r_epi + rv_w * 0.35)
    # ellipse axes: along the direction (radial) rv_w*0.8, across (tangential) r_epi*1.5
    px, py = xx - rcx, yy - rcy
    along = px * ux + py * uy
    across = -px * uy + py * ux
    rv = (along / (rv_w * 0.85)) ** 2 + (across / (r_epi * 1.45)) ** 2 <= 1.0
    rv &= d > r_epi + 2.0 / spacing_mm
    out[rv] = RV
    out[d <= r_epi] = MYO
    out[d <= r_lv] = LV
    return out


def summarise(findings: list[Finding]) -> list[str]:
    """One line per kind of finding, listing the slices it was seen on."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.severity, f.code), []).append(f)
    lines = []
    for (sev, _code), fs in groups.items():
        slices = [f.slice for f in fs if f.slice is not None]
        where = f"slice{'s' if len(slices) > 1 else ''} {', '.join(map(str, slices))}: " if slices else ""
        lines.append(f"[{sev}] {where}{fs[0].message}" + (f" (and {len(fs) - 1} similar)" if len(fs) > 1 and "%" in fs[0].message else ""))
    return lines

"""A procedural short-axis bSSFP-like phantom with its canonical mask.

Anatomy: LV blood pool with papillary muscles and a trabeculated endocardium,
myocardial ring, RV crescent with a thin free wall, pericardial fat, chest wall with
subcutaneous fat and muscle, lungs, liver. Volumes run base to apex; end-systole has a
smaller cavity and a thicker wall (myocardium is nearly incompressible). Contrast
follows a vendor style; the signal gets coil shading, blur and Rician noise.

Papillary muscles and trabeculae are drawn dark inside the LV, and labelled LV blood
pool, as in the ACDC and M&Ms ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cmrstudio.anatomy import LV, MYO, RV
from cmrstudio.case import Case

# bSSFP-like relative signal per tissue, per vendor style (blood bright, myocardium dark).
VENDOR_STYLE = {
    "siemens": dict(blood=1.00, myo=0.28, fat=0.92, muscle=0.30, liver=0.38, lung=0.04, bg=0.0, noise=0.035, gamma=1.0, blur=0.6),
    "philips": dict(blood=0.95, myo=0.33, fat=0.80, muscle=0.35, liver=0.45, lung=0.05, bg=0.0, noise=0.045, gamma=0.9, blur=0.8),
    "ge": dict(blood=0.90, myo=0.25, fat=1.00, muscle=0.28, liver=0.35, lung=0.03, bg=0.0, noise=0.030, gamma=1.1, blur=0.5),
    "canon": dict(blood=0.92, myo=0.30, fat=0.85, muscle=0.33, liver=0.42, lung=0.05, bg=0.0, noise=0.050, gamma=1.0, blur=0.9),
    "unknown": dict(blood=0.95, myo=0.30, fat=0.90, muscle=0.32, liver=0.40, lung=0.04, bg=0.0, noise=0.040, gamma=1.0, blur=0.7),
}


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    u, v = x * c + y * s, -x * s + y * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _wobbly_radius(theta, r0, rng, amp, n_terms=6):
    r = np.full_like(theta, r0, dtype=np.float64)
    for k in range(2, 2 + n_terms):
        r += amp * rng.normal() / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def phantom_slice(
    rng: np.random.Generator,
    shape=(160, 160),
    spacing=1.5,
    level=0.5,
    phase="ED",
    vendor="siemens",
    params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One slice; ``level`` runs from 0 (base) to 1 (apex). Returns (image, mask)."""
    p = params or {}
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    mm = 1.0 / spacing
    st = VENDOR_STYLE[vendor]
    img = np.zeros(shape, dtype=np.float64)
    mask = np.zeros(shape, dtype=np.uint8)
    cy, cx = h / 2 + p.get("dy", 0.0) * mm, w / 2 + p.get("dx", 0.0) * mm
    rot = p.get("rot", 0.0)

    # Body: subcutaneous fat ring around muscle; lungs; liver at the lower left of the image.
    body_ry, body_rx = 0.46 * h, 0.49 * w
    body = _ellipse(yy, xx, h / 2 + 0.04 * h, w / 2, body_ry, body_rx)
    inner = _ellipse(yy, xx, h / 2 + 0.04 * h, w / 2, body_ry - 9 * mm, body_rx - 9 * mm)
    chest = _ellipse(yy, xx, h / 2 + 0.04 * h, w / 2, body_ry - 22 * mm, body_rx - 22 * mm)
    img[body] = st["fat"]
    img[inner] = st["muscle"]
    img[chest] = st["lung"] * 3  # mediastinal soft tissue baseline
    lung_l = _ellipse(yy, xx, h * 0.48, w * 0.22, 0.28 * h, 0.17 * w, 0.2) & chest
    lung_r = _ellipse(yy, xx, h * 0.45, w * 0.80, 0.30 * h, 0.16 * w, -0.2) & chest
    img[lung_l | lung_r] = st["lung"]
    liver = _ellipse(yy, xx, h * 0.80, w * 0.30, 0.17 * h, 0.26 * w, 0.3) & chest
    img[liver] = st["liver"]

    # LV geometry (mm), shrinking towards the apex; ES: smaller cavity, thicker wall.
    r_lv = p.get("lv_radius_mm", 25.0) * (1.0 - 0.55 * level**1.5)
    wall = p.get("wall_mm", 8.0)
    if phase == "ES":
        r_epi_ed = r_lv + wall
        r_lv *= p.get("es_factor", 0.68)
        # conserve myocardial area: pi(re^2 - rl^2) constant
        r_epi = np.sqrt(r_epi_ed**2 - (r_epi_ed - wall) ** 2 + r_lv**2)
    else:
        r_epi = r_lv + wall
    theta = np.arctan2(yy - cy, xx - cx)
    d = np.hypot(yy - cy, xx - cx)
    r_endo_px = _wobbly_radius(theta, r_lv * mm, rng, amp=0.06 * r_lv * mm)
    r_epi_px = _wobbly_radius(theta, r_epi * mm, rng, amp=0.03 * r_epi * mm)
    lv = d <= r_endo_px
    epi = d <= r_epi_px

    # Pericardial fat (bright rim) and RV crescent on the image's left of the LV.
    peri = d <= r_epi_px + 3 * mm
    img[peri] = st["fat"] * 0.8
    rv_scale = p.get("rv_scale", 1.0) * (1.0 - 0.9 * level**1.2)
    rv_mask = np.zeros(shape, bool)
    if rv_scale > 0.08:
        a = np.pi + rot
        rv_len = (r_epi + 20 * rv_scale) * mm
        rcx, rcy = cx + np.cos(a) * (r_epi * 0.75) * mm, cy - np.sin(a) * (r_epi * 0.75) * mm
        outer_rv = _ellipse(yy, xx, rcy, rcx, rv_len * 1.05, (r_epi * 0.55 + 18 * rv_scale) * mm, -rot)
        rv_wall = outer_rv & ~epi
        rv_mask = _ellipse(yy, xx, rcy, rcx, rv_len * 1.05 - 2.5 * mm, (r_epi * 0.55 + 18 * rv_scale) * mm - 2.5 * mm, -rot) & ~(d <= r_epi_px + 1.5 * mm)
        img[rv_wall] = st["myo"]
        img[rv_mask] = st["blood"] * 0.97
    img[epi] = st["myo"]
    img[lv] = st["blood"]

    # Papillary muscles and trabeculae: dark blobs inside the cavity, labelled LV.
    if level < 0.85:
        for ang in (p.get("pap1", -0.6), p.get("pap2", -2.2)):
            pr = 0.65 * r_lv * mm
            py, px = cy - np.sin(ang + rot) * pr, cx + np.cos(ang + rot) * pr
            blob = _ellipse(yy, xx, py, px, 3.2 * mm, 2.4 * mm, ang) & lv
            img[blob] = st["myo"] * 1.1
        trab = (d > r_endo_px - 2.5 * mm) & lv & (np.sin(theta * rng.integers(10, 16) + rng.uniform(0, 6)) > 0.55)
        img[trab] = 0.5 * (st["myo"] + st["blood"])

    mask[rv_mask] = RV
    mask[epi & ~lv] = MYO
    mask[lv] = LV
    mask[~body] = 0
    img[~body] = st["bg"]
    return img, mask


def _degrade(img: np.ndarray, rng: np.random.Generator, st: dict) -> np.ndarray:
    h, w = img.shape
    # Coil shading: a smooth sensitivity from a coil on the anterior chest.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(-0.2, 0.1) * h, rng.uniform(0.3, 0.7) * w
    sens = 0.55 + 0.45 * np.exp(-(((yy - cy) / (0.9 * h)) ** 2 + ((xx - cx) / (1.1 * w)) ** 2))
    img = ndimage.gaussian_filter(img, st["blur"]) * sens
    img = np.clip(img, 0, None) ** st["gamma"]
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels.
    sigma = st["noise"]
    re = img + rng.normal(0, sigma, img.shape)
    im = rng.normal(0, sigma, img.shape)
    return np.hypot(re, im)


def phantom_case(
    seed: int = 0,
    n_slices: int = 8,
    shape=(160, 160),
    spacing=1.5,
    slice_mm=8.0,
    phase: str = "ED",
    vendor: str | None = None,
    params: dict | None = None,
) -> Case:
    """A whole short-axis stack (base to apex) with its canonical mask."""
    rng = np.random.default_rng(seed)
    vendor = vendor or str(rng.choice(["siemens", "philips", "ge", "canon"]))
    p = dict(
        lv_radius_mm=rng.uniform(20, 32),
        wall_mm=rng.uniform(6, 13),
        rv_scale=rng.uniform(0.7, 1.3),
        rot=rng.uniform(-0.35, 0.35),
        dx=rng.uniform(-8, 8),
        dy=rng.uniform(-8, 8),
        es_factor=rng.uniform(0.55, 0.75),
    )
    p.update(params or {})
    st = VENDOR_STYLE[vendor]
    images, masks = [], []
    for z in range(n_slices):
        level = z / max(n_slices - 1, 1) * 0.9
        srng = np.random.default_rng(seed * 1000 + z)  # same shape in ED and ES
        img, m = phantom_slice(srng, shape, spacing, level, phase, vendor, p)
        images.append(_degrade(img, rng, st))
        masks.append(m)
    image = (np.stack(images) * 1000.0).astype(np.float32)
    # index (z, y, x) -> RAS mm: columns run right-to-left, rows anterior-to-posterior
    affine = np.array([[0, 0, -spacing, 0], [0, -spacing, 0, 0], [slice_mm, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    source = {"dataset": "phantom", "seed": int(seed), "params": {k: float(v) for k, v in p.items()}, "label_convention": "canonical"}
    return Case(image, np.stack(masks), affine, vendor, phase, f"phantom_{seed:04d}_{phase}", source)

"""Deterministic augmentation of a label map: rotation, scaling, a smooth elastic deformation, a mirror.

One in-plane transform for the whole volume (so its slices stay aligned), applied by nearest-neighbour
resampling (labels stay labels). Everything follows from the parameters a case's spec holds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def augment(mask: np.ndarray, spacing: tuple[float, float, float] | None, params: dict) -> np.ndarray:
    """``mask`` (Z, Y, X) transformed by ``params`` (rotate_deg, scale, elastic_mm, elastic_seed, flip)."""
    m = np.asarray(mask, np.uint8)
    if m.ndim == 2:
        m = m[None]
    angle, scale = float(params.get("rotate_deg", 0.0)), float(params.get("scale", 1.0))
    elastic_mm, flip = float(params.get("elastic_mm", 0.0)), bool(params.get("flip", False))
    if not angle and scale == 1.0 and not elastic_mm and not flip:
        return m.copy()
    _, h, w = m.shape
    heart = np.argwhere(m.max(axis=0) > 0)
    cy, cx = heart.mean(axis=0) if len(heart) else ((h - 1) / 2, (w - 1) / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # output pixel -> input pixel: the inverse of rotate-then-scale about the heart's centre
    t = np.deg2rad(angle)
    c, s = np.cos(t), np.sin(t)
    dy, dx = yy - cy, xx - cx
    sy = (c * dy + s * dx) / scale + cy
    sx = (-s * dy + c * dx) / scale + cx
    if elastic_mm:
        rng = np.random.default_rng(int(params.get("elastic_seed", 0)))
        py = (spacing[1] if spacing else 1.0)
        px = (spacing[2] if spacing else 1.0)
        sigma = max(h, w) / 12.0
        for arr, pix in ((sy, py), (sx, px)):
            field = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma, mode="wrap")
            peak = np.abs(field).max()
            if peak > 0:
                arr += field / peak * (elastic_mm / pix)
    out = np.stack([ndimage.map_coordinates(sl, (sy, sx), order=0, mode="constant", cval=0) for sl in m]).astype(np.uint8)
    if flip:
        out = out[:, :, ::-1].copy()
    return out

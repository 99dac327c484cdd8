"""Framed heart slices of real cases: what every evaluation compares renders with."""

from __future__ import annotations

import numpy as np


def framed_slices(cases, size: int, spacing_mm: float, min_pixels: int = 20):
    """(case, framed images in [0, 1], framed masks) over each case's heart slices."""
    from cmrstudio.data.frame import to_frame

    for c in cases:
        if c.image is None or c.mask is None:
            continue
        fc = to_frame(c, size=size, spacing_mm=spacing_mm)
        zs = [z for z in range(len(fc.mask)) if (fc.mask[z] > 0).sum() >= min_pixels * (size / 128) ** 2]
        if zs:
            yield c, fc.image[zs].astype(np.float32), fc.mask[zs].astype(np.uint8)


def heart_slices(cases, renderer):
    """(case, framed real images, framed masks) for every case with an image, a mask and heart slices, in ``renderer``'s frame."""
    return framed_slices(cases, renderer.size, renderer.spacing_mm)

"""The whole slice: the scene frame, background tissue classes, and what a generator is conditioned on.

A render must fill the scan's whole field of view, not only the heart crop. Three pieces:

* **The scene frame**: a square frame at the heart frame's pixel size that covers the whole
  scan (padding beyond its edges), aligned so that the heart frame is an exact window of it
  (``Scene.window``). Generators are fully convolutional: trained on windows, run on a window
  (the live path) or on the whole scene (HQ, fully synthetic).
* **Background tissue classes** (``LAYOUT_CLASSES``), derived automatically from a real image:
  the image is smoothed, split into four intensity bands by multi-Otsu thresholds (dark,
  mid-dark, mid-bright, bright) and the dark band connected to the image's edge becomes
  "outside the body". The user paints only LV, MYO and RV; the tissue classes come from the
  real scan (for training) or from a learned prior (:mod:`cmrstudio.models.layout`) when a
  render is fully synthetic. They come as class fractions on cells: ``LAYOUT_FACTOR`` pixels
  (10 mm) for models trained with the coarse prior (where body, lung, liver and fat are, without
  their detail), or 2 pixels (2.5 mm) for models trained on each slice's own classes and rendered
  with the fine prior, which draws the detail too. A model's card says its cell
  (``conditioning.layout_factor``).
* **Conditioning** (``CONDITION_CHANNELS``): heart one-hot (3: LV, MYO, RV), tissue-class
  fractions (5, or zeros when absent), a context image and where it is valid (2). Two modes:
  *in this patient* (the real scan outside a margin around the old and new heart is the
  context; no tissue classes) and *fully synthetic* (no real pixel; tissue classes given).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmrstudio.data.frame import Frame
from cmrstudio.settings import DEFAULT_MARGIN_MM, UNCHANGED_MARGIN_MM  # noqa: F401  (kept here for the renderers: how far in-patient renders repaint)

LAYOUT_CLASSES = ("outside", "dark", "mid-dark", "mid-bright", "bright")
N_LAYOUT = len(LAYOUT_CLASSES)
LAYOUT_FACTOR = 8  # frame pixels per layout cell (10 mm at 1.25 mm)
N_HEART = 3  # LV, MYO, RV one-hot (background is implicit)
CONDITION_CHANNELS = N_HEART + N_LAYOUT + 2  # heart, layout, context, context-valid
LAYOUT_CHANNELS = slice(N_HEART, N_HEART + N_LAYOUT)  # where the tissue-class fractions are in the conditioning
SCENE_MULTIPLE = 32  # scene sizes are multiples of this (the networks halve the size up to 5 times)


@dataclass(frozen=True)
class Scene:
    """A square scene frame covering the whole scan, and where the heart frame sits in it."""

    frame: Frame  # the scene's own frame (size S, same step as the heart frame)
    window: tuple[int, int]  # (row, col) of the heart frame's pixel (0, 0) in the scene
    heart_size: int  # the heart frame's size

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """The heart window of a scene array (..., S, S)."""
        r, c = self.window
        return arr[..., r:r + self.heart_size, c:c + self.heart_size]

    def inside_scan(self) -> np.ndarray:
        """(S, S) bool: scene pixels that fall inside the scan's own grid."""
        g = self.frame.coords()
        ny, nx = self.frame.native_shape
        return (g[0] >= -0.5) & (g[0] <= ny - 0.5) & (g[1] >= -0.5) & (g[1] <= nx - 0.5)


def scene_for(heart: Frame, multiple: int = SCENE_MULTIPLE) -> Scene:
    """The scene frame of a heart frame: same step, whole-pixel offset, covering the scan."""
    ny, nx = heart.native_shape
    offs, needs = [], []
    for o, st, n in zip(heart.origin, heart.step, (ny, nx)):
        k = max(0, int(np.ceil(o / st - 1e-9)))  # scene pixels before the heart frame
        offs.append(k)
        needs.append(k + int(np.ceil((n - 1 - o) / st + 1e-9)) + 1)
    size = max(heart.size + max(offs), *needs)
    size = int(np.ceil(size / multiple) * multiple)
    origin = (heart.origin[0] - offs[0] * heart.step[0], heart.origin[1] - offs[1] * heart.step[1])
    extra = {**heart.extra, "scene": True}
    frame = Frame(size, heart.native_shape, origin, heart.step, heart.spacing_mm, heart.intensity, extra)
    return Scene(frame, (offs[0], offs[1]), heart.size)


# -- background tissue classes ---------------------------------------------------------------

def tissue_classes(image01: np.ndarray, valid: np.ndarray | None = None, sigma: float = 1.5, region: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel background tissue class (indices into ``LAYOUT_CLASSES``) of one normalised slice.

    ``valid`` marks pixels inside the scan (padding outside it is "outside"). Multi-Otsu
    thresholds (scikit-image) on the smoothed slice split it into four bands; the darkest band's
    regions that touch the scan's edge (or the padding) are outside the body. ``region`` (bool, like
    the image): the thresholds come from those valid pixels only (e.g. the heart window), and apply
    to the whole slice.
    """
    from skimage.filters import threshold_multiotsu

    img = np.asarray(image01, np.float32)
    valid = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    sm = ndimage.gaussian_filter(img, sigma)
    vals = sm[valid if region is None else valid & np.asarray(region, bool)]
    try:
        th = threshold_multiotsu(vals[:: max(1, vals.size // 20000)], classes=4)
    except ValueError:  # a flat image: too few distinct values for three thresholds
        th = np.quantile(vals, [0.25, 0.5, 0.75]) + np.array([0.0, 1e-6, 2e-6])
    band = np.digitize(sm, th)  # 0 darkest .. 3 brightest
    cls = band + 1
    dark = (band == 0) | ~valid
    lab, _ = ndimage.label(dark)
    edge = np.zeros_like(dark)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    outside_ids = np.unique(lab[(edge | ~valid) & dark])
    outside = np.isin(lab, outside_ids[outside_ids > 0])
    cls[outside] = 0
    return cls.astype(np.uint8)


CLASS_THRESHOLDS = ("scan", "frame")  # where the bands' multi-Otsu thresholds come from: the whole scan, or the heart frame


def check_class_thresholds(value: str) -> str:
    """``value`` if it names where tissue bands' thresholds come from, else one sentence saying which there are."""
    from cmrstudio.errors import CmrError

    if value not in CLASS_THRESHOLDS:
        raise CmrError(f"--class-thresholds {value!r} is not known; use {' or '.join(CLASS_THRESHOLDS)}.")
    return value


def frame_region(shape: tuple[int, int], centre: tuple[float, float], size: int) -> np.ndarray:
    """bool ``shape``: the ``size``-pixel square centred on ``centre`` (row, col), clipped to the image (the heart frame the
    studio shows, within a scene)."""
    r0, c0 = (int(round(c - (size - 1) / 2.0)) for c in centre)
    region = np.zeros(shape, bool)
    region[max(0, r0):max(0, r0 + size), max(0, c0):max(0, c0 + size)] = True
    return region


def class_fractions(classes: np.ndarray, factor: int = LAYOUT_FACTOR, n: int = N_LAYOUT) -> np.ndarray:
    """(..., H, W) class indices -> (..., n, H/f, W/f) float32 fractions of each class per cell."""
    c = np.asarray(classes)
    h, w = c.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"{h}×{w} is not divisible by the layout factor {factor}")
    onehot = (c[..., None, :, :] == np.arange(n, dtype=c.dtype)[:, None, None]).astype(np.float32)
    shp = onehot.shape[:-2] + (h // factor, factor, w // factor, factor)
    return onehot.reshape(shp).mean(axis=(-1, -3))


def heart_onehot(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) canonical labels -> (..., 3, H, W) float32 one-hot of LV, MYO, RV."""
    m = np.asarray(mask)
    return (m[..., None, :, :] == np.arange(1, N_HEART + 1, dtype=m.dtype)[:, None, None]).astype(np.float32)


def repaint_region(masks: list[np.ndarray], margin_px: float) -> np.ndarray:
    """Where the model repaints in this patient: within ``margin_px`` of any heart label of any of ``masks``
    (the scan's own heart and the painted one), as a bool map."""
    heart = np.zeros(np.asarray(masks[0]).shape, bool)
    for m in masks:
        if m is not None:
            heart |= np.asarray(m) > 0
    if not heart.any():
        return heart
    # only the heart's bounding box grown by the margin can be within it: the distance transform runs there
    rows, cols = np.nonzero(heart.any(axis=1))[0], np.nonzero(heart.any(axis=0))[0]
    pad = int(np.ceil(margin_px)) + 1
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, heart.shape[0])
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, heart.shape[1])
    out = np.zeros_like(heart)
    out[r0:r1, c0:c1] = ndimage.distance_transform_edt(~heart[r0:r1, c0:c1]) <= margin_px
    return out


def edit_region(painted: np.ndarray, own: np.ndarray | None, margin_px: float, unchanged_px: float) -> np.ndarray:
    """Where a render repaints a slice whose own labels are ``own`` (the scan's, or those kept synthetic surroundings were
    made for) when ``painted`` is painted: within ``margin_px`` of every pixel whose label changed, and within
    ``unchanged_px`` (at most ``margin_px``; :func:`cmrstudio.settings.band_mm` in mm) of the rest of either heart. The painted heart is always rendered anew;
    where its outline is the scan's own, a narrow band blends it in and the real surroundings stay, and where the painter
    moved it there is room for the new shape. Without ``own`` (a scan with no labels of its own): within ``margin_px``
    of the painted heart, as :func:`repaint_region`."""
    if own is None:
        return repaint_region([painted], margin_px)
    painted, own = np.asarray(painted), np.asarray(own)
    near = repaint_region([painted, own], min(float(unchanged_px), float(margin_px)))
    changed = painted != own
    return near | repaint_region([changed], margin_px) if changed.any() else near


def upsample_layout(layout: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, h, w) cell fractions -> (n, H, W), bilinear between cell centres (no blocky cell edges
    for the network to copy)."""
    lay = np.asarray(layout, np.float32)
    zoom = (1, shape[0] / lay.shape[-2], shape[1] / lay.shape[-1])
    out = ndimage.zoom(lay, zoom, order=1, mode="nearest", grid_mode=True)
    return out[:, :shape[0], :shape[1]]


def condition(mask: np.ndarray, layout: np.ndarray | None = None, context: np.ndarray | None = None,
              context_valid: np.ndarray | None = None, hide_layout_px: float = 0.0) -> np.ndarray:
    """Assemble the (CONDITION_CHANNELS, H, W) conditioning of one framed slice (numpy, float32).

    ``layout`` is (N_LAYOUT, H/f, W/f) fractions (upsampled here by :func:`upsample_layout`) or None; ``context`` an
    image in [0, 1] with ``context_valid`` (bool) where it holds real (or previously rendered) pixels.
    The context channel is in [-1, 1] like the network's images, 0 where not valid. ``hide_layout_px``:
    the tissue classes are left out (all fractions 0) on the heart and within that many pixels of it, so that
    a model trained so draws the inside of the heart and its rim itself rather than from the classes
    (``conditioning.layout_hidden_near_heart_mm`` in its card).
    """
    m = np.asarray(mask)
    h, w = m.shape
    out = np.zeros((CONDITION_CHANNELS, h, w), np.float32)
    out[:N_HEART] = heart_onehot(m)
    if layout is not None:
        out[N_HEART:N_HEART + N_LAYOUT] = upsample_layout(layout, (h, w))
        if hide_layout_px > 0:
            out[N_HEART:N_HEART + N_LAYOUT, repaint_region([m], hide_layout_px)] = 0.0
    if context is not None:
        valid = np.ones((h, w), bool) if context_valid is None else np.asarray(context_valid, bool)
        out[-2] = np.where(valid, np.asarray(context, np.float32) * 2 - 1, 0.0)
        out[-1] = valid
    return out

"""Training data for mask-conditioned synthesis: framed 2D slices from any reader.

Every slice that shows heart labels becomes one sample in the synthesis frame.
Augmentation is geometric and applied to image and mask together (one random
affine per sample: rotation, isotropic scale, translation), so the image stays
pixel-aligned with its conditioning mask. Intensity is left alone by default: the
generator must learn the scanner's contrast, not an augmented one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from cmrstudio.anatomy import VENDORS
from cmrstudio.case import Case
from cmrstudio.data.frame import LIVE_SIZE, LIVE_SPACING_MM, to_frame
from cmrstudio.errors import CmrError


@dataclass
class Augment:
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06  # fraction of the frame

    def matrix(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        s = rng.uniform(*self.scale)
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        c = (size - 1) / 2.0
        t = rng.uniform(-self.translate, self.translate, 2) * size
        offset = c - m @ (np.array([c, c]) + t)
        return m, offset


def apply_affine(image: np.ndarray, mask: np.ndarray, m: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = ndimage.affine_transform(image, m, offset, order=1, mode="constant", cval=0.0)
    msk = ndimage.affine_transform(mask, m, offset, order=0, mode="constant", cval=0)
    return img.astype(np.float32), msk.astype(np.uint8)


def cases_from(paths: Iterable[str | Path], with_image: bool = True) -> list[Case]:
    """Load every case with a mask (and an image, when ``with_image``) from files or folders."""
    from cmrstudio.io import read_cases

    out = [c for p in paths for c in read_cases(p) if c.mask is not None and (c.image is not None or not with_image)]
    if not out:
        raise CmrError(f"No case with {'an image and ' if with_image else ''}a mask was found in {', '.join(map(str, paths))}.")
    return out


class SliceDataset(Dataset):
    """Framed (image, mask, vendor) slices. Images come out in [-1, 1], shape (1, N, N).

    A slice is kept when it has at least ``min_heart_px`` labelled pixels and every
    label in ``require_labels`` (e.g. LV and MYO, to skip Sunnybrook slices whose
    epicardium was never drawn).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        size: int = LIVE_SIZE,
        spacing_mm: float = LIVE_SPACING_MM,
        augment: Augment | None = Augment(),
        seed: int = 0,
        min_heart_px: int = 20,
        require_labels: Sequence[int] = (),
    ):
        self.size = size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        images, masks, vendors, index = [], [], [], []
        for c in cases:
            if c.image is None or c.mask is None:
                continue
            fc = to_frame(c, size=size, spacing_mm=spacing_mm)
            for z in range(fc.mask.shape[0]):
                present = np.unique(fc.mask[z])
                if int((fc.mask[z] > 0).sum()) >= min_heart_px and all(l in present for l in require_labels):
                    images.append(fc.image[z])
                    masks.append(fc.mask[z])
                    vendors.append(VENDORS.index(c.vendor))
                    index.append((c.case_id, z))
        if not images:
            raise CmrError("None of the given cases has a slice with both an image and heart labels to train on.")
        self.images = np.stack(images)
        self.masks = np.stack(masks)
        self.vendors = np.asarray(vendors, dtype=np.int64)
        self.index = index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        img, msk = self.images[i], self.masks[i]
        if self.augment is not None:
            m, off = self.augment.matrix(self.rng, self.size)
            img, msk = apply_affine(img, msk, m, off)
        return {
            "image": torch.from_numpy(img * 2.0 - 1.0)[None],
            "mask": torch.from_numpy(msk.astype(np.int64)),
            "vendor": torch.tensor(self.vendors[i]),
            "case": self.index[i][0],
            "slice": self.index[i][1],
        }


@dataclass
class SceneAugment:
    """Training windows of the scene: where, how turned and scaled, and which mode."""

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    jitter_px: float = 16.0  # window centre around the heart (SD, frame pixels)
    anywhere: float = 0.15  # fraction of windows placed anywhere in the scene (background away from the heart)
    context: float = 0.5  # fraction trained "in this patient" (real context outside a margin); the rest fully synthetic
    margin_px: tuple[float, float] = (4.0, 14.0)  # repaint margin around the heart in context mode
    move_px: float = 10.0  # the repainted region also covers the heart moved by up to this (a painted heart differs)


class SceneDataset(Dataset):
    """Windows of whole-scan scenes for fully convolutional generators.

    Every heart slice is put in its scene frame (:func:`cmrstudio.data.scene.scene_for`: the heart
    frame's pixel size, covering the whole scan) with its background tissue classes. A sample is a
    ``window``-pixel square around the heart (or anywhere, sometimes), turned and scaled, in one of
    two modes: *fully synthetic* (conditioning: heart one-hot and tissue-class fractions) or *in this
    patient* (heart one-hot and the real image outside a margin around the heart as context).
    Images come out in [-1, 1], shape (1, W, W); ``cond`` is (CONDITION_CHANNELS, W, W).
    """

    def __init__(self, cases: Sequence[Case], window: int = LIVE_SIZE, spacing_mm: float = LIVE_SPACING_MM,
                 augment: SceneAugment | None = SceneAugment(), seed: int = 0, min_heart_px: int = 20,
                 require_labels: Sequence[int] = (), mode: str | None = None, layout_prior=None, layout_factor: int | None = None,
                 hide_layout_mm: float = 0.0, class_thresholds: str = "scan"):
        from cmrstudio.data.frame import make_frame
        from cmrstudio.data.scene import LAYOUT_FACTOR, check_class_thresholds, frame_region, scene_for, tissue_classes

        self.class_thresholds = check_class_thresholds(class_thresholds)

        # the tissue classes' cell: the projecting prior's, or as asked (a fine prior's cells: the slice's own classes)
        self.layout_factor = int(layout_prior.cfg.factor if layout_prior is not None else layout_factor or LAYOUT_FACTOR)
        if window % self.layout_factor:
            raise CmrError(f"The training window {window} must be a multiple of the tissue-class cell, {self.layout_factor} px.")
        self.window = window
        self.hide_layout_px = float(hide_layout_mm) / spacing_mm  # fully synthetic windows: no tissue classes this near the heart
        self.augment = augment
        self.mode = mode  # None: mixed as augment.context says; "synthetic" or "context": always that mode
        self.rng = np.random.default_rng(seed)
        self.images, self.masks, self.classes, self.centres, self.insides = [], [], [], [], []
        scan_classes = []  # the whole scan's bands, which a coarse prior (fit on them) projects; only kept when they differ
        vendors, index = [], []
        for c in cases:
            if c.image is None or c.mask is None:
                continue
            heart = make_frame(c, size=window, spacing_mm=spacing_mm)
            sc = scene_for(heart)
            fc = to_frame(c, sc.frame)
            inside = sc.inside_scan()
            centre = (sc.window[0] + (window - 1) / 2.0, sc.window[1] + (window - 1) / 2.0)
            for z in range(fc.mask.shape[0]):
                hm = sc.crop(fc.mask[z])
                present = np.unique(hm)
                if int((hm > 0).sum()) >= min_heart_px and all(l in present for l in require_labels):
                    self.images.append(fc.image[z].astype(np.float16))
                    self.masks.append(fc.mask[z])
                    cls = tissue_classes(fc.image[z], inside)
                    if class_thresholds == "frame":  # the heart frame's intensities set the bands (as a layout bank's)
                        scan_classes.append(cls)
                        cls = tissue_classes(fc.image[z], inside, region=frame_region(inside.shape, centre, window))
                    self.classes.append(cls)
                    self.centres.append(centre)
                    self.insides.append(inside)  # one array per case, shared by its slices
                    vendors.append(VENDORS.index(c.vendor))
                    index.append((c.case_id, z))
        if not self.images:
            raise CmrError("None of the given cases has a slice with both an image and heart labels to train on.")
        self.vendors = np.asarray(vendors, dtype=np.int64)
        self.index = index
        self.layout_prior = layout_prior
        self.projected: list[tuple[np.ndarray, tuple[int, int]]] = []
        if layout_prior is not None:  # fully synthetic conditioning as the prior can express it (see cmrstudio.models.layout)
            from cmrstudio.models.layout import cell_maps, window_origin

            cfg = layout_prior.cfg
            for i in range(len(self.images)):
                o = window_origin(self.centres[i], self.images[i].shape[-1], cfg)
                maps = cell_maps((scan_classes or self.classes)[i], self.masks[i], self.insides[i], o, cfg)
                self.projected.append((layout_prior.project(maps).astype(np.float16), o))

    def __len__(self) -> int:
        return len(self.images)

    def _coords(self, i: int, fixed: bool = False, n: int | None = None) -> np.ndarray:
        """Scene coordinates (2, n, n) of a window of slice ``i`` (``n``: the training window): around the heart or
        anywhere, turned and scaled as the augmentation says."""
        a = self.augment
        n = n or self.window
        size = self.images[i].shape[-1]
        c = np.asarray(self.centres[i], dtype=np.float64)
        if a is None or fixed:
            ang, s = 0.0, 1.0
        else:
            if self.rng.random() < a.anywhere:
                c = self.rng.uniform(n / 2, size - n / 2, 2)
            else:
                c = c + np.clip(self.rng.normal(0, a.jitter_px, 2), -2.5 * a.jitter_px, 2.5 * a.jitter_px)
            ang = np.deg2rad(self.rng.uniform(-a.rotate_deg, a.rotate_deg))
            s = self.rng.uniform(*a.scale)
        r = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        g = np.stack(np.meshgrid(r, r, indexing="ij")).reshape(2, -1)
        m = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
        return (m @ g + c[:, None]).reshape(2, n, n)

    def sample(self, i: int, mode: str | None = None, fixed: bool = False) -> dict:
        """Window ``i`` as numpy arrays (image in [0, 1], mask, classes, conditioning, repaint region).
        ``fixed``: the heart window itself, unturned, with a 10-pixel margin in context mode (sample grids)."""
        from cmrstudio.data.scene import class_fractions, condition, repaint_region

        g = self._coords(i, fixed)
        img = ndimage.map_coordinates(self.images[i].astype(np.float32), g, order=1, mode="constant", cval=0.0)
        msk = ndimage.map_coordinates(self.masks[i], g, order=0, mode="constant", cval=0).astype(np.uint8)
        cls = ndimage.map_coordinates(self.classes[i], g, order=0, mode="constant", cval=0).astype(np.uint8)
        a = self.augment or SceneAugment(context=0.5)
        mode = mode or self.mode or ("context" if self.rng.random() < a.context else "synthetic")
        hole = np.zeros(msk.shape, bool)
        if mode == "context":
            moved = None if fixed or not a.move_px else ndimage.shift(msk, self.rng.uniform(-a.move_px, a.move_px, 2), order=0)
            hole = repaint_region([msk, moved], 10.0 if fixed else self.rng.uniform(*a.margin_px))
            if not hole.any():  # no heart in this window: repaint a random disc, as a painter might
                yy, xx = np.ogrid[: msk.shape[0], : msk.shape[1]]
                cy, cx = self.rng.uniform(0, msk.shape[0], 2)
                hole = (yy - cy) ** 2 + (xx - cx) ** 2 <= self.rng.uniform(10, 30) ** 2
            cond = condition(msk, None, img, ~hole)
        else:
            cond = condition(msk, self._layout(i, g) if self.projected else class_fractions(cls, self.layout_factor),
                             hide_layout_px=self.hide_layout_px)
        return {"image01": img, "mask": msk, "classes": cls, "cond": cond, "hole": hole, "mode": mode}

    def _layout(self, i: int, g: np.ndarray) -> np.ndarray:
        """The projected layout of slice ``i`` on the cells of the window whose scene coordinates are ``g`` (2, n, n)."""
        from cmrstudio.data.scene import N_LAYOUT

        lay, (r0, c0) = self.projected[i]
        f, n = self.layout_factor, g.shape[-1]
        centres = g.reshape(2, n // f, f, n // f, f).mean(axis=(2, 4))  # scene pixel coordinates of each window cell's centre
        at = np.stack([centres[0] / f - 0.5 - r0, centres[1] / f - 0.5 - c0])
        out = np.stack([ndimage.map_coordinates(lay[k].astype(np.float32), at, order=1, mode="constant", cval=1.0 if k == 0 else 0.0)
                        for k in range(N_LAYOUT)])
        return (out / np.maximum(out.sum(0, keepdims=True), 1e-6)).astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        return {
            "image": torch.from_numpy(s["image01"] * 2.0 - 1.0)[None],
            "cond": torch.from_numpy(s["cond"]),
            "mask": torch.from_numpy(s["mask"].astype(np.int64)),
            "hole": torch.from_numpy(s["hole"]),
            "vendor": torch.tensor(self.vendors[i]),
            "case": self.index[i][0],
            "slice": self.index[i][1],
        }

    def fixed_batch(self, n: int = 6) -> dict:
        """The sample grid's windows: one slice from each of ``n`` cases spread over the data, both modes."""
        picks = spread_picks(self.index, n)
        syn = [self.sample(i, "synthetic", fixed=True) for i in picks]
        ctx = [self.sample(i, "context", fixed=True) for i in picks]
        return {
            "mask": torch.from_numpy(np.stack([s["mask"] for s in syn]).astype(np.int64)),
            "image": torch.from_numpy(np.stack([s["image01"] for s in syn]) * 2 - 1)[:, None],
            "cond": torch.from_numpy(np.stack([s["cond"] for s in syn])),
            "cond_context": torch.from_numpy(np.stack([s["cond"] for s in ctx])),
            "vendor": torch.from_numpy(self.vendors[picks]),
            "seeds": (1234, 1235),
        }


class FineLayoutDataset(Dataset):
    """Training data of the fine tissue-class prior (:mod:`cmrstudio.models.layout`, ``FineLayout``).

    For each heart slice of a :class:`SceneDataset` built with the coarse prior (probabilistic PCA): a
    window of ``cells`` × ``cells`` cells of ``factor`` pixels, placed and turned like the image
    windows. ``image`` is the slice's own tissue classes as fractions per cell in [-1, 1] (5
    channels); ``cond`` the heart's label fractions (3) and the scan's extent (1) on the same cells,
    and the coarse layout the prior can express for this slice (its projection, 5), bilinear on the
    fine cells. The model learns the crisp shapes (chest wall, fat, lung edges) a coarse layout
    leaves out; at render time the coarse layout is a sample of the prior.
    """

    def __init__(self, scenes: SceneDataset, cells: int = 96, factor: int = 2, seed: int = 0, augment: bool = True):
        if not scenes.projected:
            raise CmrError("The fine tissue-class prior is trained on scenes projected onto a coarse prior; give the scenes one.")
        if (cells * factor) % scenes.layout_factor:
            raise CmrError(f"{cells} cells of {factor} px are not whole cells of the coarse prior ({scenes.layout_factor} px).")
        self.scenes = scenes
        self.cells = cells
        self.factor = factor
        self.augment = augment
        self.vendors = scenes.vendors
        self.index = scenes.index

    @property
    def rng(self) -> np.random.Generator:  # the scenes' windows are this data's randomness (saved with a run's state)
        return self.scenes.rng

    @rng.setter
    def rng(self, value: np.random.Generator) -> None:  # a data-loading worker's own stream
        self.scenes.rng = value

    def __len__(self) -> int:
        return len(self.scenes)

    def sample(self, i: int, fixed: bool = False) -> dict:
        from cmrstudio.data.scene import class_fractions, heart_onehot, upsample_layout

        sc = self.scenes
        f, k = self.factor, self.cells
        g = sc._coords(i, fixed or not self.augment, n=k * f)
        cls = ndimage.map_coordinates(sc.classes[i], g, order=0, mode="constant", cval=0).astype(np.uint8)
        msk = ndimage.map_coordinates(sc.masks[i], g, order=0, mode="constant", cval=0).astype(np.uint8)
        inside = ndimage.map_coordinates(sc.insides[i].astype(np.uint8), g, order=0, mode="constant", cval=0).astype(np.float32)
        return {"x": class_fractions(cls, f) * 2 - 1, "mask": msk[f // 2::f, f // 2::f],
                "cond": fine_layout_condition(heart_onehot(msk), inside, upsample_layout(sc._layout(i, g), (k, k)), f)}

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        return {"image": torch.from_numpy(s["x"]), "cond": torch.from_numpy(s["cond"]), "mask": torch.from_numpy(s["mask"].astype(np.int64)),
                "vendor": torch.tensor(self.vendors[i]), "case": self.index[i][0], "slice": self.index[i][1]}

    def heart_classes(self) -> dict[str, int]:
        """The tissue class each heart label most often has in these slices (LV, MYO, RV: index into LAYOUT_CLASSES)."""
        from cmrstudio.data.scene import N_HEART, N_LAYOUT

        counts = np.zeros((N_HEART + 1) * N_LAYOUT, np.int64)
        for cls, m in zip(self.scenes.classes, self.scenes.masks):
            counts += np.bincount((np.minimum(m, N_HEART).astype(np.int64) * N_LAYOUT + cls).ravel(), minlength=counts.size)
        counts = counts.reshape(N_HEART + 1, N_LAYOUT)
        return {name: int(counts[k].argmax()) for k, name in enumerate(("LV", "MYO", "RV"), 1) if counts[k].any()}

    def fixed_batch(self, n: int = 6) -> dict:
        picks = spread_picks(self.index, n)
        ss = [self.sample(i, fixed=True) for i in picks]
        return {"mask": torch.from_numpy(np.stack([s["mask"] for s in ss]).astype(np.int64)),
                "image": torch.from_numpy(np.stack([s["x"] for s in ss])),
                "cond": torch.from_numpy(np.stack([s["cond"] for s in ss])),
                "vendor": torch.from_numpy(self.vendors[picks]), "seeds": (1234, 1235)}


def fine_layout_condition(heart: np.ndarray, inside: np.ndarray, coarse: np.ndarray, factor: int) -> np.ndarray:
    """The fine prior's conditioning (9, H/f, W/f): heart fractions (from a (3, H, W) one-hot) and the scan's extent (H, W)
    pooled on cells of ``factor`` pixels, then the coarse layout already on those cells (5, H/f, W/f)."""
    h, w = inside.shape
    pool = lambda a: a.reshape(a.shape[:-2] + (h // factor, factor, w // factor, factor)).mean(axis=(-1, -3))  # noqa: E731
    return np.concatenate([pool(np.asarray(heart, np.float32)), pool(np.asarray(inside, np.float32))[None],
                           np.asarray(coarse, np.float32)]).astype(np.float32)


def spread_picks(index: list[tuple[str, int]], n: int) -> list[int]:
    """Up to ``n`` sample indices, each from another case (not its first slice), spread over the data."""
    picks, seen = [], set()
    for i, (cid, z) in enumerate(index):
        if cid not in seen and z >= 1:
            picks.append(i)
            seen.add(cid)
    step = max(1, len(picks) // n)
    return picks[::step][:n] or [0]

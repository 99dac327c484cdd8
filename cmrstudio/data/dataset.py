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

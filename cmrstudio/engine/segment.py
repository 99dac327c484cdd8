"""Segment a real scan with the bundled segmenter: the studio's "start from a segmentation" mask."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from cmrstudio.case import Case
from cmrstudio.data.frame import from_frame, make_frame, to_frame
from cmrstudio.engine.device import pick_device
from cmrstudio.errors import CmrError
from cmrstudio.models.registry import build_model, get_model


@lru_cache(maxsize=2)
def _segmenter(model: str | None, device: str | None):
    info = get_model(model, kind="segmenter")
    return info, build_model(info, pick_device(device))


def segment_scan(case: Case, model: str | None = None, device: str | None = None, slices: list[int] | None = None,
                 centre: tuple[float, float] | None = None) -> np.ndarray:
    """A canonical mask (Z, Y, X) for ``case``'s image, in its own pixel grid.

    The image goes into the segmenter's frame (centred on the case's mask when it has one,
    else on ``centre`` or the image centre), is segmented, and the labels come back by nearest neighbour.
    The network is loaded once and kept (the studio segments slice after slice).
    Only ``slices`` are segmented when given; the others stay background.
    """
    if case.image is None:
        raise CmrError(f"The case {case.case_id} has no image to segment; open a scan first.")
    info, net = _segmenter(model, device)
    fr = info.card.get("frame", {})
    size = int(fr.get("size", net.cfg.size))
    spacing = fr.get("spacing_mm", 1.25)
    frame = make_frame(case, size=size, spacing_mm=spacing, centre=None if case.mask is not None and case.mask.any() else centre)
    framed = to_frame(case, frame)
    zs = list(range(case.shape[0])) if slices is None else [int(z) for z in slices]
    out = np.zeros(case.shape, np.uint8)
    if zs:
        pred = segment_framed(net, framed.image[zs])
        out[zs] = from_frame(pred, frame, kind="mask")
    return out


@torch.inference_mode()
def segment_framed(net: torch.nn.Module, images01: np.ndarray, batch: int = 32) -> np.ndarray:
    """Framed images in [0, 1], (B, N, N) -> canonical label maps (B, N, N) uint8."""
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(images01), batch):
        x = torch.from_numpy(np.asarray(images01[i:i + batch], np.float32) * 2 - 1)[:, None].to(dev)
        out.append(net(x).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + np.shape(images01)[1:], np.uint8)


def segment_images(net: torch.nn.Module, images01: np.ndarray, seg_size: int) -> np.ndarray:
    """Segment framed images of any frame size: resized to the segmenter's own frame size and back when they differ."""
    n = images01.shape[-1]
    if n == seg_size:
        return segment_framed(net, images01)
    from scipy import ndimage

    up = ndimage.zoom(images01, (1, seg_size / n, seg_size / n), order=1)
    pred = segment_framed(net, up)
    return ndimage.zoom(pred, (1, n / seg_size, n / seg_size), order=0)

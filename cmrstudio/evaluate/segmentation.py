"""Segmentation accuracy: Dice and HD95 (mm) per structure, the instrument's own figures.

Images and expert masks are put in the segmenter's synthesis frame (in-plane pixels of a known
size in mm), segmented, and compared with the expert mask:

* **Dice** per structure over the case's heart slices (3D Dice of the stack);
* **HD95** per structure, the 95th percentile of the symmetric surface distance in mm, slice by
  slice in 2D (MONAI's ``compute_hausdorff_distance`` with the frame's pixel spacing), averaged over
  the slices where the expert drew the structure. A slice where the segmenter finds nothing of a
  drawn structure has no surface distance: it is counted apart as a miss.

Cases are then averaged (mean and standard deviation across cases).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from cmrstudio.errors import CmrError

STRUCTURES = {1: "LV", 2: "MYO", 3: "RV"}


def hd95_2d(pred: np.ndarray, ref: np.ndarray, label: int, spacing_mm: float) -> float | None:
    """HD95 in mm between one structure of two 2D label maps; None when either side is empty."""
    from monai.metrics import compute_hausdorff_distance

    p, r = pred == label, ref == label
    if not p.any() or not r.any():
        return None
    y_pred = torch.from_numpy(np.stack([~p, p])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~r, r])[None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI 1.5+ warns about one of its own internal arguments on every call
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        d = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=float(spacing_mm))
    return float(d.item())


def case_scores(pred: np.ndarray, ref: np.ndarray, spacing_mm: float) -> dict:
    """Per-structure Dice (3D), HD95 (mean over slices, mm) and missed slices of one case's framed stack."""
    out = {}
    for lab, name in STRUCTURES.items():
        r = ref == lab
        if not r.any():
            continue
        p = pred == lab
        dice = float(2 * (p & r).sum() / (p.sum() + r.sum()))
        hds, missed = [], 0
        for z in range(len(ref)):
            if not r[z].any():
                continue
            h = hd95_2d(pred[z], ref[z], lab, spacing_mm)
            if h is None:
                missed += 1
            else:
                hds.append(h)
        out[name] = {"dice": dice, "hd95_mm": float(np.mean(hds)) if hds else None, "missed_slices": missed}
    return out


def summarise(rows: list[dict]) -> dict:
    """Mean and SD across cases, per structure and for the mean of the structures."""
    out = {}
    for name in list(STRUCTURES.values()):
        for metric in ("dice", "hd95_mm"):
            vals = [r["scores"][name][metric] for r in rows if name in r["scores"] and r["scores"][name][metric] is not None]
            out.setdefault(name, {})[metric] = round(float(np.mean(vals)), 4) if vals else None
            out[name][metric + "_sd"] = round(float(np.std(vals, ddof=1)), 4) if len(vals) > 1 else None
        out[name]["missed_slices"] = int(sum(r["scores"].get(name, {}).get("missed_slices", 0) for r in rows))
    for metric in ("dice", "hd95_mm"):
        vals = [out[n][metric] for n in STRUCTURES.values() if out[n][metric] is not None]
        out.setdefault("mean", {})[metric] = round(float(np.mean(vals)), 4) if vals else None
    return out


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


@dataclass
class SegmentationResult:
    segmenter: str
    cases: int
    slices: int
    summary: dict
    per_case: list[dict]
    spacing_mm: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_segmenter(cases, segmenter=None, device: str | None = None) -> SegmentationResult:
    """Dice and HD95 of a segmenter (a name, card path or loaded ModelInfo) on real cases with expert masks."""
    from cmrstudio.engine.device import pick_device
    from cmrstudio.evaluate.faithfulness import _segment
    from cmrstudio.models.registry import build_model, get_model

    info = get_model(segmenter, kind="segmenter") if not hasattr(segmenter, "card") else segmenter
    net = build_model(info, pick_device(device))
    size = int(net.cfg.size)
    spacing = float(info.card.get("frame", {}).get("spacing_mm") or 1.25)
    rows, n = [], 0
    for c, images, masks in framed_slices(cases, size, spacing):
        pred = _segment(net, images, size)
        rows.append({"case": c.case_id, "vendor": c.vendor, "slices": len(masks), "scores": case_scores(pred, masks, spacing)})
        n += len(masks)
    if not rows:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    return SegmentationResult(info.name, len(rows), n, summarise(rows), rows, spacing)

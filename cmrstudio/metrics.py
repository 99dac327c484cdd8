"""Segmentation metrics on canonical label maps: Dice and HD95 per structure, and their summaries.

One place for what the faithfulness, segmenter, utility and privacy evaluations all compare:

* :func:`dice` of one structure, :func:`dice_scores` of every structure and their mean;
* :func:`hd95_2d`: the 95th percentile of the symmetric surface distance in mm between one
  structure of two 2D label maps (MONAI's ``compute_hausdorff_distance`` with the pixel spacing);
* :func:`case_scores`: per structure, 3D Dice of a case's stack, HD95 averaged over the slices where
  the expert drew it, and slices where nothing of it was found (a miss has no surface distance);
* :func:`summarise`: mean and SD across cases.

Structure names are the anatomy's short names (:data:`cmrstudio.anatomy.SHORT_NAMES`).
"""

from __future__ import annotations

import warnings

import numpy as np

from cmrstudio.anatomy import LV, MYO, RV, SHORT_NAMES

STRUCTURES = {lab: SHORT_NAMES[lab] for lab in (LV, MYO, RV)}


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float | None:
    """Dice of one structure; None when the reference does not have it."""
    r = ref == label
    if not r.any():
        return None
    p = pred == label
    return float(2 * (p & r).sum() / (p.sum() + r.sum()))


def dice_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Dice of every structure (None where the reference has none) and their ``mean``."""
    d = {name: dice(pred, ref, lab) for lab, name in STRUCTURES.items()}
    present = [v for v in d.values() if v is not None]
    d["mean"] = float(np.mean(present)) if present else None
    return d


def hd95_2d(pred: np.ndarray, ref: np.ndarray, label: int, spacing_mm: float) -> float | None:
    """HD95 in mm between one structure of two 2D label maps; None when either side is empty."""
    import torch
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
        d = dice(pred, ref, lab)
        hds, missed = [], 0
        for z in range(len(ref)):
            if not r[z].any():
                continue
            h = hd95_2d(pred[z], ref[z], lab, spacing_mm)
            if h is None:
                missed += 1
            else:
                hds.append(h)
        out[name] = {"dice": d, "hd95_mm": float(np.mean(hds)) if hds else None, "missed_slices": missed}
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

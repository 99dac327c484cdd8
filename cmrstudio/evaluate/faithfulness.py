"""Mask faithfulness: does a synthetic image show the anatomy that was painted?

For each held-out case (real image + expert mask), in the synthesis frame:

* the segmenter, trained on real scans only, segments the **real** image: Dice against
  the expert mask (the instrument's own ceiling on real data);
* the generator renders the **expert mask** (the case's own vendor, several seeds) and
  the same segmenter segments the synthetic image: Dice against the mask that was painted.

Dice is per structure (LV, MYO, RV) over the case's heart slices (3D Dice per case),
then averaged over cases; a structure absent from a case's mask is skipped for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmrstudio.case import Case
from cmrstudio.engine.factory import open_renderer
from cmrstudio.errors import CmrError
from cmrstudio.models.registry import build_model, get_model
from cmrstudio.train.segmenter import segment_framed

STRUCTURES = {1: "LV", 2: "MYO", 3: "RV"}  # short names of LABELS[1..3]


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float | None:
    r = ref == label
    if not r.any():
        return None
    p = pred == label
    return float(2 * (p & r).sum() / (p.sum() + r.sum()))


@dataclass
class Faithfulness:
    per_case: list[dict]
    real: dict[str, float]
    synthetic: dict[str, float]
    n_cases: int
    n_slices: int
    seeds: int
    generator: dict

    def to_dict(self) -> dict:
        return {"real": self.real, "synthetic": self.synthetic, "cases": self.n_cases, "slices": self.n_slices,
                "seeds": self.seeds, "generator": self.generator, "per_case": self.per_case}


def _mean(rows: list[dict], key: str) -> dict[str, float]:
    out = {}
    for name in list(STRUCTURES.values()) + ["mean"]:
        vals = [r[key][name] for r in rows if r[key].get(name) is not None]
        out[name] = round(float(np.mean(vals)), 4) if vals else float("nan")
    return out


def _scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    d = {name: dice(pred, ref, lab) for lab, name in STRUCTURES.items()}
    present = [v for v in d.values() if v is not None]
    d["mean"] = float(np.mean(present)) if present else None
    return d


def _segment(seg, images01: np.ndarray, seg_size: int) -> np.ndarray:
    """Segment framed images; resized to the segmenter's frame size and back when the two differ."""
    n = images01.shape[-1]
    if n == seg_size:
        return segment_framed(seg, images01)
    from scipy import ndimage

    up = ndimage.zoom(images01, (1, seg_size / n, seg_size / n), order=1)
    pred = segment_framed(seg, up)
    return ndimage.zoom(pred, (1, n / seg_size, n / seg_size), order=0)


def heart_slices(cases: list[Case], r):
    """(case, framed real images, framed masks) for every case with an image, a mask and heart slices, in ``r``'s frame."""
    from cmrstudio.evaluate.segmentation import framed_slices

    return framed_slices(cases, r.size, r.spacing_mm)


def evaluate_faithfulness(cases: list[Case], model: str | None = None, segmenter: str | None = None, seeds: int = 2,
                          device: str | None = None, **hq) -> Faithfulness:
    """Real and synthetic images are compared in the generator's frame, through the same segmenter path.

    Any generator: SPADE, or a diffusion/flow model (``hq``: steps, guidance, solver).
    """
    r = open_renderer(model, device=device, **hq)
    seg = build_model(get_model(segmenter, kind="segmenter"), r.device)
    seg_size = int(seg.cfg.size)
    rows, n_slices = [], 0
    for c, images, ref in heart_slices(cases, r):
        real = _scores(_segment(seg, images, seg_size), ref)
        syn_runs = [_scores(_segment(seg, r.render_framed(ref, c.vendor, seed=s), seg_size), ref) for s in range(seeds)]
        syn = {k: (float(np.mean([x[k] for x in syn_runs])) if syn_runs[0][k] is not None else None) for k in syn_runs[0]}
        rows.append({"case": c.case_id, "vendor": c.vendor, "slices": len(ref), "real": real, "synthetic": syn})
        n_slices += len(ref)
    if not rows:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    return Faithfulness(rows, _mean(rows, "real"), _mean(rows, "synthetic"), len(rows), n_slices, seeds, r.describe())

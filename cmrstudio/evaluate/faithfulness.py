"""Mask faithfulness: does a synthetic image show the anatomy that was painted?

For each held-out case (real image + expert mask), in the synthesis frame:

* the segmenter, trained on real scans only, segments the **real** image: Dice against
  the expert mask (the instrument's own ceiling on real data);
* the generator renders the **expert mask** (the case's own vendor, several seeds) and
  the same segmenter segments the synthetic image: Dice against the mask that was painted.
  Every slice gets its own seed, numbered as :func:`~cmrstudio.evaluate.fidelity.evaluate_fidelity`
  numbers them, so with the same number of seeds both score the same renders.

Dice is per structure (LV, MYO, RV) over the case's heart slices (3D Dice per case),
then averaged over cases; a structure absent from a case's mask is skipped for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmrstudio.case import Case
from cmrstudio.data.slices import heart_slices
from cmrstudio.engine.factory import open_renderer
from cmrstudio.engine.scene import leaving_out
from cmrstudio.engine.segment import segment_images
from cmrstudio.errors import CmrError
from cmrstudio.metrics import STRUCTURES, dice, dice_scores  # noqa: F401  (dice: the figure this module reports)
from cmrstudio.models.registry import build_model, get_model

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


def evaluate_faithfulness(cases: list[Case], model: str | None = None, segmenter: str | None = None, seeds: int = 2,
                          device: str | None = None, **hq) -> Faithfulness:
    """Real and synthetic images are compared in the generator's frame, through the same segmenter path.

    Any generator: SPADE, or a diffusion/flow model (``hq``: steps, guidance, solver).
    """
    r = open_renderer(model, device=device, **hq)
    seg = build_model(get_model(segmenter, kind="segmenter"), r.device)
    seg_size = int(seg.cfg.size)
    rows, n_slices, n = [], 0, 0
    for c, images, ref in heart_slices(cases, r):
        real = dice_scores(segment_images(seg, images, seg_size), ref)
        syn_runs = []
        for _ in range(seeds):  # every slice its own seed, numbered as evaluate_fidelity numbers them (same seeds: same renders)
            with leaving_out(r, c.case_id):
                syn = r.render_framed(ref, c.vendor, seed=list(range(n, n + len(ref))))
            syn_runs.append(dice_scores(segment_images(seg, syn, seg_size), ref))
            n += len(ref)
        syn = {k: (float(np.mean([x[k] for x in syn_runs])) if syn_runs[0][k] is not None else None) for k in syn_runs[0]}
        rows.append({"case": c.case_id, "vendor": c.vendor, "slices": len(ref), "real": real, "synthetic": syn})
        n_slices += len(ref)
    if not rows:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    return Faithfulness(rows, _mean(rows, "real"), _mean(rows, "synthetic"), len(rows), n_slices, seeds, r.describe())

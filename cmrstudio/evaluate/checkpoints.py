"""Which checkpoint of a training run to ship: every kept checkpoint measured the same way on held-out patients.

A run trained with ``--keep-checkpoints`` keeps a copy of the model (EMA weights and card) at every save in
``RUN/checkpoints/NAME-stepNNNNNN.{safetensors,json}``. :func:`evaluate_checkpoints` renders the same held-out
heart slices with each (one seed per slice, the same seeds for every checkpoint), fully synthetic or, for scene
models, in the patient's own slice (repainting within the usual margin of the heart), and measures:

* **KID and FID** of the renders against the real slices (the FID Inception, heart crops);
* **segmenter Dice** on the renders against the painted masks, beside the segmenter's Dice on the real slices;
* **the upsampling grid's peak ratio** (:func:`~cmrstudio.evaluate.realism.grid_artefact`) beside real slices'.

With ``seed_sets`` N > 1 every slice is rendered N times (seed sets ``seed + k × slices``): the KID pools the N renders
of each slice, and the spread of the N sets' own KIDs is reported beside it. That spread is the honest noise of a screen:
on 120 slices one set's KID moves by about 4 ×10⁻³ from seed set to seed set, more than the ± over feature subsets
(resources/models/README.md). ``compare`` names other models (the shipped one, a soup) measured alike on the same slices
and seeds, listed after the checkpoints and never named best.

The real slices, their features and the real figures are computed once. GAN losses say little about which step
looks best, and these figures move by about their noise between neighbouring checkpoints, so the table is what a
person picks from. ``best`` names, among the checkpoints without a grid peak, the one with the highest Dice (fully
synthetic: the anatomy must be drawn from the mask alone) or, in this patient, the lowest KID (most of the slice is
the patient's own, so what tells renders apart is how real the repainted heart and its ring look).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError

MAX_SEED_SETS = 16
GRID_LIMIT = 5.0  # the peak ratio above which a render has an upsampling grid (tests/test_realism.py uses the same limit)
_STEP = re.compile(r"-step(\d+)$")


def checkpoint_cards(run: str | Path) -> list[Path]:
    """The checkpoint cards of a run folder, oldest first; refused in one sentence when it kept none."""
    run = Path(run)
    if not run.is_dir():
        raise CmrError(f"{run} is not a training run folder; give the --out folder of `cmrstudio train`.")
    cards = [p for p in (run / "checkpoints").glob("*.json") if _STEP.search(p.stem)]
    if not cards:
        raise CmrError(f"{run} holds no kept checkpoints (no {run / 'checkpoints'}/NAME-stepNNNNNN.json); "
                       "train with --keep-checkpoints to keep one at every save.")
    return sorted(cards, key=lambda p: int(_STEP.search(p.stem).group(1)))


def evaluate_checkpoints(run: str | Path, cases, max_slices: int | None = 120, segmenter: str | None = None,
                         device: str | None = None, seed: int = 0, progress=None, mode: str = "synthetic", seed_sets: int = 1,
                         compare: list[str] | tuple[str, ...] = ()) -> dict:
    """Measure every kept checkpoint of ``run`` on the heart slices of ``cases`` (held-out patients), rendered in
    ``mode`` (``synthetic`` or ``in-patient``), ``seed_sets`` times, beside the models in ``compare``; see the module."""
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.segment import segment_images
    from cmrstudio.evaluate.fidelity import InceptionFeatures, fid, kid
    from cmrstudio.evaluate.realism import check_mode, grid_artefact, render_rows, spread_rows
    from cmrstudio.metrics import dice_scores
    from cmrstudio.models.registry import build_model, get_model
    from cmrstudio.settings import UNCHANGED_MARGIN_MM

    if isinstance(seed_sets, bool) or not isinstance(seed_sets, int) or not 1 <= seed_sets <= MAX_SEED_SETS:
        raise CmrError(f"--seed-sets {seed_sets} must be a whole number from 1 to {MAX_SEED_SETS}.")
    cards = checkpoint_cards(run)
    first = open_renderer(str(cards[0]), device=device)
    check_mode(mode, first)
    others = [open_renderer(str(m), device=device) for m in compare]  # refused up front, before any rendering
    for r in others:
        check_mode(mode, r)
        if r.size != first.size:
            raise CmrError(f"{r.info.card_path} renders {r.size}-pixel frames, the run's checkpoints {first.size}; compare "
                           "models of the same frame.")
    rows = spread_rows(first, cases, max_slices)
    if len(rows) < 2:
        raise CmrError("Checkpoints are compared on at least two heart slices with images and masks; none of the given cases has them.")
    real = np.stack([img for _, img, _ in rows]).astype(np.float32)
    masks = np.stack([m for _, _, m in rows]).astype(np.uint8)
    seg = build_model(get_model(segmenter, kind="segmenter"), first.device)
    seg_size = int(seg.cfg.size)
    feats = InceptionFeatures(first.device)
    f_real = feats(real)
    out = {"run": str(run), "mode": mode, **({"margin_mm": UNCHANGED_MARGIN_MM} if mode == "in-patient" else {}),
           "slices": len(rows), "cases": sorted({c.case_id for c, _, _ in rows}), "seed": seed, "seed_sets": seed_sets,
           "real": {"dice": dice_scores(segment_images(seg, real, seg_size), masks), "grid_peak_ratio": grid_artefact(real)["peak_ratio"]},
           "checkpoints": []}

    def measure(r, card, step):
        sets = [render_rows(r, rows, mode, seed + k * len(rows)) for k in range(seed_sets)]
        synth, f_sets = np.concatenate(sets), [feats(x) for x in sets]
        f_syn = np.concatenate(f_sets)
        kd, kd_std = kid(f_real, f_syn)
        row = {"name": r.name, "card": str(card), "step": step, "sha256": r.info.card.get("sha256"),
               "kid": kd, "kid_std": kd_std, "fid": fid(f_real, f_syn),
               "dice": dice_scores(segment_images(seg, synth, seg_size), np.concatenate([masks] * seed_sets)), "grid": grid_artefact(synth)}
        if seed_sets > 1:
            each = [kid(f_real, f)[0] for f in f_sets]
            row.update(kid_seed_sets=each, kid_seed_sd=float(np.std(each, ddof=1)))
        if progress is not None:
            progress(row)
        return row

    for k, card in enumerate(cards):
        r = first if k == 0 else open_renderer(str(card), device=device)
        if r.size != first.size:
            raise CmrError(f"{card} renders {r.size}-pixel frames, the run's first checkpoint {first.size}; compare checkpoints of one run.")
        out["checkpoints"].append(measure(r, card, int(_STEP.search(card.stem).group(1))))
    out["compared"] = [measure(r, r.info.card_path, None) for r in others]
    clean = [c for c in out["checkpoints"] if c["grid"]["peak_ratio"] <= GRID_LIMIT]
    if mode == "in-patient":
        out["best"] = min(clean or out["checkpoints"], key=lambda c: c["kid"])["name"]
        what = "the lowest KID"
    else:
        out["best"] = max(clean or out["checkpoints"], key=lambda c: c["dice"]["mean"] or 0.0)["name"]
        what = "the highest mean Dice"
    out["best_rule"] = (f"{what} among checkpoints whose grid peak ratio is at most {GRID_LIMIT:g}" if clean else
                        f"{what}; every checkpoint has a grid peak ratio above {GRID_LIMIT:g}")
    return out

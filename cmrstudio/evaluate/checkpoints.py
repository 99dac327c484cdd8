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
person picks from. ``best`` (:func:`pick_best`) names, among the checkpoints without a grid peak, the one with the lowest
KID: fully synthetic, among those whose segmenter Dice is faithful (at least the real slices' Dice less
``FAITHFUL_DICE``, the realism issue's target; where none is, the highest Dice, since the anatomy comes first); in this
patient, among all of them (most of the slice is the patient's own, so what tells renders apart is how real the
repainted heart and its ring look). ``from_step`` / ``to_step`` screen only the checkpoints between them (the ones a
resumed run added, say).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cmrstudio.errors import CmrError

MAX_SEED_SETS = 16
GRID_LIMIT = 5.0  # the peak ratio above which a render has an upsampling grid (tests/test_realism.py uses the same limit)
FAITHFUL_DICE = 0.02  # a render's segmenter Dice within this of the real slices' keeps the anatomy (the realism issue's target)
_STEP = re.compile(r"-step(\d+)$")


def checkpoint_cards(run: str | Path, from_step: int | None = None, to_step: int | None = None) -> list[Path]:
    """The checkpoint cards of a run folder, oldest first, those from ``from_step`` to ``to_step`` (both kept) where given;
    refused in one sentence when it kept none there."""
    run = Path(run)
    if not run.is_dir():
        raise CmrError(f"{run} is not a training run folder; give the --out folder of `cmrstudio train`.")
    for flag, v in (("--from-step", from_step), ("--to-step", to_step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise CmrError(f"{flag} {v!r} must be a step number, 0 or more.")
    cards = sorted((p for p in (run / "checkpoints").glob("*.json") if _STEP.search(p.stem)), key=_step_of)
    if not cards:
        raise CmrError(f"{run} holds no kept checkpoints (no {run / 'checkpoints'}/NAME-stepNNNNNN.json); "
                       "train with --keep-checkpoints to keep one at every save.")
    lo, hi = from_step or 0, to_step if to_step is not None else float("inf")
    within = [p for p in cards if lo <= _step_of(p) <= hi]
    if not within:
        raise CmrError(f"{run} kept no checkpoint from step {lo} to {to_step if to_step is not None else 'the end'}; it kept steps "
                       f"{_step_of(cards[0])} to {_step_of(cards[-1])}.")
    return within


def _step_of(card: Path) -> int:
    return int(_STEP.search(card.stem).group(1))


def pick_best(checkpoints: list[dict], real_dice: float | None, mode: str) -> tuple[str, str]:
    """The checkpoint to ship by the module's rule, and the rule in words: among those without a grid peak (all, where
    each has one), the lowest KID; fully synthetic only among the faithful ones (Dice at least ``real_dice`` less
    ``FAITHFUL_DICE``), or, where none is, the highest Dice."""
    clean = [c for c in checkpoints if c["grid"]["peak_ratio"] <= GRID_LIMIT]
    pool = clean or checkpoints
    grid = f"whose grid peak ratio is at most {GRID_LIMIT:g}" if clean else f"(every one has a grid peak ratio above {GRID_LIMIT:g})"
    if mode == "in-patient":
        return min(pool, key=lambda c: c["kid"])["name"], f"the lowest KID among checkpoints {grid}"
    floor = None if real_dice is None else real_dice - FAITHFUL_DICE
    faithful = [c for c in pool if floor is not None and (c["dice"]["mean"] or 0.0) >= floor]
    if faithful:
        return (min(faithful, key=lambda c: c["kid"])["name"],
                f"the lowest KID among checkpoints {grid}, with a Dice of at least {floor:.3f} (the real slices' less {FAITHFUL_DICE:g})")
    return (max(pool, key=lambda c: c["dice"]["mean"] or 0.0)["name"],
            f"the highest mean Dice among checkpoints {grid}: none reaches the real slices' Dice less {FAITHFUL_DICE:g}")


def evaluate_checkpoints(run: str | Path, cases, max_slices: int | None = 120, segmenter: str | None = None,
                         device: str | None = None, seed: int = 0, progress=None, mode: str = "synthetic", seed_sets: int = 1,
                         compare: list[str] | tuple[str, ...] = (), from_step: int | None = None, to_step: int | None = None) -> dict:
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
    cards = checkpoint_cards(run, from_step, to_step)
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
        out["checkpoints"].append(measure(r, card, _step_of(card)))
    out["compared"] = [measure(r, r.info.card_path, None) for r in others]
    out["best"], out["best_rule"] = pick_best(out["checkpoints"], out["real"]["dice"]["mean"], mode)
    return out

"""Realism: can a kernel distance, a trained classifier or a spectrum tell renders from real scans?

:func:`evaluate_realism` puts one generator through three tests on patients it never saw, in
either mode (fully synthetic, or in this patient: the real slice outside a band around the heart, 5 mm unless
chosen, as a labelled scan rendered with its own outline gets in the studio):

* **KID** (and FID) of renders of the held-out masks against the real held-out slices, beside the
  **real-vs-real floor**: the held-out real slices against real slices of *other* patients (the
  training patients), measured the same way. A model is as real as KID can tell when it reaches
  the floor.
* **A machine reader**: the study's real-vs-synthetic CNN (:mod:`cmrstudio.study.machine`) trained
  on the training patients' real slices against renders of their masks, then asked about the
  held-out real slices and renders: accuracy on single images (50% = cannot tell), with an exact
  95% interval, and its ROC AUC. One reader's accuracy moves by tens of points with its own seed
  (65%, 83% and 96% on the same 259 renders of the HQ default), so several readers (3 unless
  chosen) are trained on the same images with their own seeds: the figures are their mean, and
  each reader's is kept beside it.
* **Upsampling artefacts**: the renders' power at the frequencies an upsampling grid (2, 4, 8, 16
  pixels) would add, each against its neighbouring frequencies, compared with the same figure for
  the real slices (:func:`grid_artefact`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmrstudio.errors import CmrError
from cmrstudio.record import MODES
from cmrstudio.settings import UNCHANGED_MARGIN_MM, check_margin

GRID_PERIODS = (2, 4, 8, 16)


def _spectra(images01: np.ndarray) -> dict[str, np.ndarray]:
    """Two Hann-windowed power spectra of a set of images (N, S, S): the mean power spectrum of the images
    (a grid pattern the same in every image, as sub-pixel output layers leave) and the power spectrum of
    their mean gradient energy (a grid that modulates the content, as nearest-neighbour upsampling does:
    edges across block borders differ from edges inside blocks, whatever the content)."""
    x = np.asarray(images01, np.float64)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] < 32:
        raise CmrError(f"The spectrum test needs square images (N, S, S) of at least 32 pixels, not shape {x.shape}.")
    n = x.shape[-1]
    window = np.hanning(n)[:, None] * np.hanning(n)[None, :]  # no edge leakage into the grid frequencies
    xc = x - x.mean(axis=(1, 2), keepdims=True)
    g = np.zeros_like(x)
    g[:, :, :-1] += np.diff(x, axis=2) ** 2
    g[:, :-1, :] += np.diff(x, axis=1) ** 2
    # the mean gradient energy of each of up to 8 groups of images: averaging the groups' spectra keeps a
    # grid (present in every group) and steadies the rest (Welch's method)
    groups = np.array_split(np.arange(len(x)), max(1, min(8, len(x) // 4)))
    ms = np.stack([g[ix].mean(0) for ix in groups])
    ms -= ms.mean(axis=(1, 2), keepdims=True)
    return {"image": (np.abs(np.fft.fft2(xc * window)) ** 2).mean(0),
            "gradient energy": (np.abs(np.fft.fft2(ms * window)) ** 2).mean(0)}


def _grid_ratios(p: np.ndarray, min_cycles: int = 0) -> dict[tuple[int, int], float]:
    """At every grid frequency (multiples of N/16 in each direction; at least ``min_cycles`` in one of them), the power
    over the median of its 5×5 neighbourhood off the grid lines."""
    n = p.shape[-1]
    step = n // max(GRID_PERIODS)
    grid = np.zeros(n, bool)
    grid[::step] = True
    du, dv = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
    out = {}
    for u in range(0, n // 2 + 1, step):
        for v in range(0, n, step):
            if u == 0 and (v == 0 or v > n // 2):
                continue
            if max(u, min(v, n - v)) < min_cycles:
                continue
            uu, vv = (u + du) % n, (v + dv) % n
            off = ~grid[uu] & ~grid[vv]
            out[(u, v)] = float(p[u, v] / max(np.median(p[uu[off], vv[off]]), 1e-30))
    return out


def grid_artefact(synthetic01: np.ndarray, real01: np.ndarray | None = None) -> dict:
    """How much an upsampling grid (2, 4, 8 or 16 pixels) stands out in renders, beside real scans.

    At each frequency such a grid would add power to (multiples of N/16 cycles in each direction: a
    checkerboard at (N/2, N/2), stripes at (N/2, 0), ...), in each of two spectra (:func:`_spectra`),
    the power is divided by the median of its neighbouring frequencies. In the gradient-energy spectrum
    only grids of 4 pixels and finer are looked at: coarser ones there are the heart's own shape.
    ``peak_ratio`` is the largest such ratio of the renders (about 1–3 for real scans, which have no
    grid; far above for a visible one), with where it is; ``real_peak_ratio`` the same figure for ``real01``.
    """
    def peak(images):
        n = images.shape[-1]
        best = {"peak_ratio": 0.0}
        for name, p in _spectra(images).items():
            for (u, v), ratio in _grid_ratios(p, n // 4 if name == "gradient energy" else 0).items():
                if ratio > best["peak_ratio"]:
                    w = min(v, n - v)
                    best = {"peak_ratio": round(ratio, 3), "spectrum": name, "frequency": [u, w],
                            "period_px": [round(n / k, 2) if k else None for k in (u, w)]}
        return best

    out = peak(np.asarray(synthetic01))
    if real01 is not None:
        out["real_peak_ratio"] = peak(np.asarray(real01))["peak_ratio"]
    return out


@dataclass
class Realism:
    mode: str
    kid: float
    kid_std: float
    fid: float
    kid_real_floor: float
    kid_real_floor_std: float
    fid_real_floor: float
    machine_accuracy: float
    machine_accuracy_ci: list[float]
    machine_auc: float
    machine_n: int
    grid_artefact: dict
    n_real: int
    n_synthetic: int
    n_reference: int
    n_classifier_train: int
    generator: dict
    classifier_steps: int | None = None  # the machine reader's training steps
    margin_mm: float | None = None  # in this patient: how far around the heart the renders repainted
    machine_readers: list = field(default_factory=list)  # each reader's seed, accuracy and AUC (the figures above: their mean)
    machine_accuracy_sd: float | None = None  # between the readers

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def spread_rows(r, cases, max_slices: int | None = None) -> list:
    """(case, framed real slice, framed mask) of every heart slice of ``cases`` in ``r``'s frame; at most ``max_slices``,
    spread evenly."""
    from cmrstudio.data.slices import heart_slices

    rows = [(c, img, m) for c, imgs, ms in heart_slices(cases, r) for img, m in zip(imgs, ms)]
    if max_slices is not None and len(rows) > max_slices:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, max_slices).round().astype(int)]
    return rows


def check_mode(mode: str, renderer=None) -> str:
    """A render mode of the evaluations, or one sentence saying which there are; with ``renderer``, also one saying
    when a heart-crop model is asked for renders in this patient."""
    if mode not in MODES:
        raise CmrError(f"--mode {mode!r} is not known; use synthetic (no real pixel) or in-patient (the scan's own surroundings).")
    if renderer is not None and mode == "in-patient" and not renderer.scene:
        raise CmrError(f"The model '{renderer.name}' renders the heart crop only, so it has no in-patient mode; use --mode synthetic.")
    return mode


def render_rows(r, rows, mode: str, seed0: int, margin_mm: float | None = None) -> np.ndarray:
    """One render of each row's mask (its vendor; slice j gets seed ``seed0 + j``), in this patient (repainting within
    ``margin_mm`` of the heart; None: the 5 mm band the studio repaints around a scan's own outline) or fully synthetic."""
    from cmrstudio.engine.scene import leaving_out

    synth = []
    for j, (c, img, m) in enumerate(rows):
        ctx = img[None] if mode == "in-patient" else None
        with leaving_out(r, c.case_id):  # a layout bank: never the patient's own body
            synth.append(r.render_framed(m[None], c.vendor, seed=[seed0 + j], context=ctx, margin_mm=margin_mm)[0])
    return np.stack(synth).astype(np.float32)


def _render(r, cases, mode: str, seed0: int, max_slices: int | None = None, margin_mm: float | None = None):
    """(real framed slices, renders of their masks) over ``cases``; at most ``max_slices``, spread evenly."""
    rows = spread_rows(r, cases, max_slices)
    if not rows:
        return np.zeros((0, r.size, r.size), np.float32), np.zeros((0, r.size, r.size), np.float32)
    return np.stack([img for _, img, _ in rows]).astype(np.float32), render_rows(r, rows, mode, seed0, margin_mm)


def evaluate_realism(held_out, reference, model: str | None = None, mode: str = "synthetic", classifier_steps: int = 400,
                     max_train_slices: int = 300, device: str | None = None, seed: int = 0, margin_mm: float | None = None,
                     readers: int = 3, **hq) -> Realism:
    """KID against the real-vs-real floor, a trained machine reader and the grid-artefact spectrum (see the module notes).

    ``held_out``: cases of patients the model never saw; ``reference``: cases of other patients (the training
    ones), real images for the floor and the machine reader's training data. ``readers``: machine readers trained on them,
    reader i with seed ``seed + 100 i``; the reader figures are their mean.
    """
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.evaluate.fidelity import InceptionFeatures, fid, kid
    from cmrstudio.study.machine import _resize, auc, classify, train_classifier
    from cmrstudio.study.stats import proportion
    from cmrstudio.train.common import check_counts

    check_mode(mode)
    check_counts(classifier_steps=classifier_steps, max_train=max_train_slices, readers=readers)  # before minutes of rendering
    if margin_mm is not None and mode != "in-patient":
        raise CmrError("--margin is how far renders in this patient repaint; give it with --mode in-patient.")
    margin = (UNCHANGED_MARGIN_MM if margin_mm is None else check_margin(margin_mm)) if mode == "in-patient" else None
    r = open_renderer(model, device=device, **hq)
    check_mode(mode, r)
    real_h, syn_h = _render(r, held_out, mode, 10_000 + seed, margin_mm=margin)
    if len(real_h) < 4:
        raise CmrError("The held-out cases give fewer than 4 heart slices; give more held-out patients (--case).")
    real_t, syn_t = _render(r, reference, mode, 20_000 + seed, max_train_slices, margin)
    if len(real_t) < 4:
        raise CmrError("The reference (training) cases give fewer than 4 heart slices; give the training data with --data.")
    feats = InceptionFeatures(r.device)
    f_rh, f_sh, f_rt = feats(real_h), feats(syn_h), feats(real_t)
    k, k_sd = kid(f_rh, f_sh)
    k0, k0_sd = kid(f_rh, f_rt)
    x_train = _resize(np.concatenate([real_t, syn_t]))  # the readers see 128×128 slices, as study items are
    y_train = np.r_[np.zeros(len(real_t)), np.ones(len(syn_t))].astype(np.int64)
    x_test, y = _resize(np.concatenate([real_h, syn_h])), np.r_[np.zeros(len(real_h)), np.ones(len(syn_h))]
    votes = []
    for i in range(int(readers)):
        net, _info = train_classifier(x_train, y_train, steps=classifier_steps, seed=seed + 100 * i, val_fraction=0.0)
        p = classify(net, x_test)
        votes.append({"seed": seed + 100 * i, "accuracy": float(np.mean((p >= 0.5) == (y == 1))), "auc": float(auc(p, y))})
    accs = np.array([v["accuracy"] for v in votes])
    _acc, ci = proportion(int(round(accs.mean() * len(y))), len(y))  # the test images' share of the uncertainty
    return Realism(mode, k, k_sd, fid(f_rh, f_sh), k0, k0_sd, fid(f_rh, f_rt), float(accs.mean()), [float(v) for v in ci],
                   float(np.mean([v["auc"] for v in votes])), int(len(y)), grid_artefact(syn_h, real_h), len(real_h), len(syn_h),
                   len(real_t), 2 * len(real_t), {**r.describe(), "mode": mode}, int(classifier_steps), margin, votes,
                   float(accs.std(ddof=1)) if len(accs) > 1 else 0.0)

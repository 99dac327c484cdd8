"""Fitting the tissue-class prior (probabilistic PCA, :mod:`cmrstudio.models.layout`) on real scans.

Every heart slice of the training cases is put in its scene frame, its background tissue classes
derived, and the heart-centred window of tissue, heart and scan-extent fractions collected; the
prior is PCA on those vectors. Seconds of work; the result is a model (kind ``layout``) that the
scene generators are trained with (their fully synthetic conditioning is projected onto it) and
that fully synthetic renders sample from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmrstudio.data.frame import LIVE_SIZE, LIVE_SPACING_MM
from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import ModelInfo, save_model
from cmrstudio.models.layout import N_MAPS, LayoutConfig, LayoutPCA, cell_maps, window_origin
from cmrstudio.train.common import data_summary, load_cases, terms_for


@dataclass
class LayoutOptions:
    data: list[str] = field(default_factory=list)
    out: str = "runs/layout"
    name: str = "layout"
    phantom: int = 0
    exclude: list[str] = field(default_factory=list)
    components: int = 32
    seed: int = 0
    require_labels: tuple[int, ...] = (1, 2)


def layout_vectors(ds, cfg: LayoutConfig) -> np.ndarray:
    """(N, N_MAPS × cells²) windows of every slice of a :class:`~cmrstudio.data.dataset.SceneDataset`."""
    rows = []
    for i in range(len(ds)):
        o = window_origin(ds.centres[i], ds.images[i].shape[-1], cfg)
        rows.append(cell_maps(ds.classes[i], ds.masks[i], ds.insides[i], o, cfg).reshape(-1))
    return np.stack(rows)


def fit_layout(opts: LayoutOptions, log=print) -> ModelInfo:
    from cmrstudio.data.dataset import SceneDataset

    if not 2 <= int(opts.components) <= 512:
        raise CmrError(f"--components {opts.components} must be between 2 and 512 (32 is usual).")
    t0 = time.perf_counter()
    cases = load_cases(opts.data, opts.phantom, opts.exclude, opts.seed)
    ds = SceneDataset(cases, window=LIVE_SIZE, spacing_mm=LIVE_SPACING_MM, augment=None, seed=opts.seed, require_labels=opts.require_labels)
    if len(ds) < 4:
        raise CmrError(f"The data gives {len(ds)} heart slices; the tissue-class prior needs at least 4 (more than --components is better).")
    cfg = LayoutConfig(components=min(int(opts.components), len(ds) - 1))
    log(f"Fitting the tissue-class prior on {len(ds)} slices from {len(cases)} cases ({cfg.cells}×{cfg.cells} cells of "
        f"{cfg.factor * LIVE_SPACING_MM:g} mm, {cfg.components} components).")
    x = layout_vectors(ds, cfg)
    prior = LayoutPCA.fit(x, cfg)
    explained = float(prior.eigvals.sum() / (prior.eigvals.sum() + prior.noise_var * (x.shape[1] - len(prior.eigvals))))
    summary = data_summary(ds, cases)
    card = {
        "kind": "layout",
        "architecture": {"class": "cmrstudio.models.layout.LayoutPCA", "options": cfg.to_dict(), "parameters": prior.parameters,
                         "maps": N_MAPS, "what": "probabilistic PCA of heart-centred windows of background tissue-class fractions, "
                                                 "heart label fractions and the scan's extent; samples from the posterior given the "
                                                 "painted heart and the scan's extent"},
        "frame": {"cell_mm": cfg.factor * LIVE_SPACING_MM, "window_cells": cfg.cells, "heart_frame_size": LIVE_SIZE,
                  "heart_frame_spacing_mm": LIVE_SPACING_MM},
        "conditioning": {"scheme": "layout-prior-v2", "inputs": ["LV", "MYO", "RV", "inside-scan"],
                         "outputs": ["tissue:outside", "tissue:dark", "tissue:mid-dark", "tissue:mid-bright", "tissue:bright"]},
        "label_scheme": "canonical",
        "training": {"data": summary, "held_out_case_prefixes": list(opts.exclude), "slices": len(ds), "iterations": 1,
                     "variance_explained": round(explained, 4), "noise_variance": prior.noise_var,
                     "seconds": round(time.perf_counter() - t0, 1), "seed": opts.seed},
        "terms": terms_for(summary),
        "metrics": {},
    }
    return save_model(Path(opts.out), opts.name, prior.state(), card)


@dataclass
class BankOptions:
    data: list[str] = field(default_factory=list)
    out: str = "runs/layout-bank"
    name: str = "layout-bank"
    exclude: list[str] = field(default_factory=list)
    fallback: str = "layout-cmr-fine"  # the fine prior beyond a picked scan's edge; its cell size is the bank's
    k: int = 20  # on 120 training cases: KID as with 5 (84.0 / 83.5 ×10⁻³), MS-SSIM between seeds 0.41 against 0.52
    seed: int = 0
    require_labels: tuple[int, ...] = (1, 2)


def build_bank(opts: BankOptions, log=print) -> ModelInfo:
    """A layout bank (:class:`~cmrstudio.models.layout.LayoutBank`) of every heart slice of the given scans: their own
    fine tissue classes over the whole scene, with each heart's key and centre."""
    from cmrstudio.data.dataset import SceneDataset
    from cmrstudio.models.layout import (BANK_KEY_POOL, BANK_KEY_PX, BEYOND_SCAN, fine_cell_px, heart_centre, heart_key, installed_prior,
                                         is_fine, pack_classes)

    if not 1 <= int(opts.k) <= 1000:
        raise CmrError(f"--k {opts.k} must be between 1 and 1000 (the nearest hearts a seed picks among; 20 is usual).")
    fb = installed_prior(opts.fallback, None, "the bank")
    if not is_fine(fb):
        raise CmrError(f"--fallback {opts.fallback}: '{fb.name}' is not a fine tissue-class prior (like layout-cmr-fine); the bank's "
                       "cells are a fine prior's.")
    factor = fine_cell_px(fb)
    t0 = time.perf_counter()
    cases = load_cases(opts.data, 0, opts.exclude, opts.seed)
    # the bands' thresholds come from the heart frame (the 160 mm window the studio shows) and apply to the whole scene:
    # the intensities around the heart set them, not the whole scan's (on 120 held-out slices, fully synthetic KID with a
    # bank of the 120 training cases: 96 with whole-scan thresholds, 83 with these)
    ds = SceneDataset(cases, window=LIVE_SIZE, spacing_mm=LIVE_SPACING_MM, augment=None, seed=opts.seed,
                      require_labels=opts.require_labels, layout_factor=factor, class_thresholds="frame")
    state, centres, keys, shapes = {}, [], [], []
    for i in range(len(ds)):
        classes = np.where(ds.insides[i], ds.classes[i], BEYOND_SCAN).astype(np.uint8)
        state[f"classes_{i:04d}"] = pack_classes(classes)
        shapes.append(classes.shape)
        centres.append(heart_centre(ds.masks[i]))
        keys.append(heart_key(ds.masks[i]))
    state["centres"] = np.asarray(centres, np.float32)
    state["keys"] = np.stack(keys).astype(np.float16)
    state["shapes"] = np.asarray(shapes, np.int32)
    log(f"Layout bank: {len(ds)} slices from {len(cases)} cases, cells of {factor * LIVE_SPACING_MM:g} mm, each seed picking among "
        f"the {opts.k} nearest hearts; fallback {fb.name}.")
    summary = data_summary(ds, cases)
    card = {
        "kind": "layout",
        "architecture": {"class": "cmrstudio.models.layout.LayoutBank", "options": {"k": int(opts.k), "cell_px": factor},
                         "parameters": 0, "what": "real scans' own tissue classes on fine cells, keyed by their heart; a seed picks one "
                                                  "of the k scenes whose heart overlaps the painted one most and shifts it onto it"},
        "frame": {"cell_mm": factor * LIVE_SPACING_MM, "heart_frame_size": LIVE_SIZE, "heart_frame_spacing_mm": LIVE_SPACING_MM,
                  "key": f"LV, MYO, RV fractions on {BANK_KEY_POOL}-px cells of a {BANK_KEY_PX}-px window around the heart's centroid"},
        "conditioning": {"scheme": "layout-bank-v1", "cell_px": factor, "inputs": ["LV", "MYO", "RV", "inside-scan"],
                         "outputs": ["tissue:outside", "tissue:dark", "tissue:mid-dark", "tissue:mid-bright", "tissue:bright"],
                         "fallback_prior": {"name": fb.name, "sha256": fb.card.get("sha256")},
                         "storage": "each entry's classes zlib-compressed (uint8 bytes) with its shape in 'shapes'"},
        "sampling": {"k": int(opts.k)},
        "training": {"data": summary, "held_out_case_prefixes": list(opts.exclude), "slices": len(ds), "iterations": 0,
                     "entries": [{"case": cid, "slice": int(z)} for cid, z in ds.index],
                     "seconds": round(time.perf_counter() - t0, 1), "seed": opts.seed},
        "terms": terms_for(summary) + " A bank holds its scans' body layouts (tissue classes on fine cells, no pixel): give it only "
                                      "where those scans may go.",
        "metrics": {},
    }
    return save_model(Path(opts.out), opts.name, state, card)

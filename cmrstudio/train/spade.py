"""Training a SPADE generator on any folder the readers understand (and/or the phantom).

The run folder, resumable state, sample grids and loop are shared with the other
generators (:mod:`cmrstudio.train.base`). Losses: hinge GAN, discriminator feature
matching, and an L1 on 4×-downsampled images (instead of the VGG perceptual loss of the
SPADE paper: no ImageNet weights offline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmrstudio.errors import CmrError
from cmrstudio.models.spade import (
    PRESETS,
    LossWeights,
    MultiScaleDiscriminator,
    SpadeConfig,
    SpadeGenerator,
    count_parameters,
    d_hinge,
    feature_matching,
    g_hinge,
    lowpass_l1,
    onehot,
)
from cmrstudio.train.base import BaseOptions, BaseTrainer


@dataclass
class TrainOptions(BaseOptions):
    out: str = "runs/spade"
    name: str = "spade"
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    fm: float = 10.0
    lowpass: float = 10.0


class SpadeTrainer(BaseTrainer):
    kind = "spade"
    presets = PRESETS
    postfix = ("d", "g_adv", "lowpass")

    def check_options(self) -> None:
        try:
            SpadeConfig(size=self.opts.size).n_up
        except ValueError:
            raise CmrError(f"--size {self.opts.size} must be 8 times a power of two, like 64, 128 or 256.") from None

    def build(self) -> None:
        opts = self.opts
        self.cfg = SpadeConfig.from_dict({**PRESETS[opts.preset].to_dict(), "size": opts.size})
        self.G = SpadeGenerator(self.cfg).to(self.device)
        self.D = MultiScaleDiscriminator(self.cfg).to(self.device)
        self.G_ema = SpadeGenerator(self.cfg).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=opts.lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=opts.lr_d, betas=(0.0, 0.999))
        self.weights = LossWeights(fm=opts.fm, lowpass=opts.lowpass)

    def networks(self) -> dict:
        return {"generator": self.G, "ema": self.G_ema, "discriminator": self.D}

    def optimisers(self) -> dict:
        return {"g": self.opt_g, "d": self.opt_d}

    def describe_start(self) -> str:
        return f"Training SPADE ({self.opts.preset}, {count_parameters(self.G) / 1e6:.2f} M parameters)"

    def architecture(self) -> dict:
        return {
            "class": "cmrstudio.models.spade.SpadeGenerator",
            "preset": self.opts.preset,
            "options": self.cfg.to_dict(),
            "parameters": count_parameters(self.G),
            "discriminator_parameters": count_parameters(self.D),
            "normalisation": "instance norm + SPADE (mask one-hot, vendor bias)",
            "losses": {"hinge_gan": 1.0, "feature_matching": self.weights.fm, "lowpass_l1_4x": self.weights.lowpass,
                       "note": "no VGG perceptual loss (no ImageNet weights offline); low-pass L1 instead"},
            "ema": self.opts.ema,
        }

    def training_extra(self) -> dict:
        return {"lr": {"g": self.opts.lr_g, "d": self.opts.lr_d}}

    def render_fixed(self, f: dict) -> list[np.ndarray]:
        oh = onehot(f["mask"]).to(self.device)
        v = f["vendor"].to(self.device)
        rows = []
        for seed in f["seeds"]:
            z = torch.randn(1, self.cfg.z_dim, generator=torch.Generator().manual_seed(seed)).expand(len(oh), -1)
            rows.append(self.G_ema(oh, v, z.to(self.device)).cpu()[:, 0].numpy())
        return rows

    def train_step(self, batch: dict) -> dict:
        real = batch["image"].to(self.device)
        oh = onehot(batch["mask"]).to(self.device)
        vendor = self.drop_vendor(batch["vendor"])

        fake = self.G(oh, vendor)
        d_real = self.D(real, oh, vendor)
        d_fake = self.D(fake.detach(), oh, vendor)
        loss_d = d_hinge(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        d_fake = self.D(fake, oh, vendor)
        with torch.no_grad():
            d_real = self.D(real, oh, vendor)
        adv = g_hinge(d_fake)
        fm = feature_matching(d_real, d_fake)
        lp = lowpass_l1(fake, real)
        loss_g = adv + self.weights.fm * fm + self.weights.lowpass * lp
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.update_ema(self.G_ema, self.G)
        return {k: float(v.detach()) for k, v in (("d", loss_d), ("g_adv", adv), ("fm", fm), ("lowpass", lp), ("g", loss_g))}

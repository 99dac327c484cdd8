"""SPADE generator and multi-scale patch discriminator for mask-to-image synthesis.

Generator (Park et al., "Semantic Image Synthesis with Spatially-Adaptive
Normalization", CVPR 2019), made lean for the CPU live path:

* the input is a latent ``z`` (style noise, 64-d) and a vendor embedding, projected
  to an 8×8 map; five SPADE residual blocks upsample it to 128×128 (one more per
  doubling for 256);
* every normalisation is spatially adaptive: parameter-free instance norm, then a
  per-pixel scale and shift predicted from the one-hot mask resized to that scale;
* the vendor style enters each SPADE module as a bias on its hidden mask features,
  so scanner contrast is modulated everywhere, not only at the input;
* one shared hidden conv per residual block feeds every SPADE in that block, and
  gamma/beta come from one fused conv (half the convolutions of the original);
* instance norm rather than batch norm: a single live frame normalises the same
  way as a training batch, and it is allowed under DP-SGD (Opacus).

Discriminator: ``num_d`` PatchGAN discriminators at 1, 1/2, 1/4 scale (pix2pixHD),
each seeing image ⊕ one-hot mask ⊕ vendor one-hot; spectral norm is optional
(DP-SGD forbids it). Features of every layer are returned for feature matching.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrstudio.anatomy import LABELS, VENDORS

N_LABELS = len(LABELS)
N_VENDORS = len(VENDORS)


@dataclass
class SpadeConfig:
    """Architecture options, stored in the model card and used to rebuild the net."""

    size: int = 128
    ngf: int = 16  # channels at full resolution; doubles per halving, capped at 8*ngf
    max_mult: int = 8
    z_dim: int = 64
    vendor_dim: int = 16
    hidden: int = 32  # SPADE hidden channels at full resolution (doubles per halving, up to max_hidden)
    max_hidden: int = 64
    start: int = 8  # spatial size of the first feature map
    n_labels: int = N_LABELS
    n_vendors: int = N_VENDORS
    ndf: int = 32
    num_d: int = 2
    d_layers: int = 3
    d_spectral_norm: bool = True
    d_groupnorm: bool = False  # GroupNorm in the discriminator (differentially private training: no spectral norm there)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpadeConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def n_up(self) -> int:
        n = math.log2(self.size / self.start)
        if n != int(n) or n < 1:
            raise ValueError(f"size {self.size} must be start {self.start} times a power of two")
        return int(n)


PRESETS = {
    # CPU live path: 2.4 M parameters (most in the 8×8 projection), ~40 ms a frame on 2 cores.
    "lite": SpadeConfig(),
    # GPU / HQ: wider (6.3 M parameters), same structure.
    "base": SpadeConfig(ngf=32, hidden=64, ndf=64),
}


class SPADE(nn.Module):
    """Instance norm, then per-pixel gamma/beta from the shared hidden mask features."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.gamma_beta.weight)
        nn.init.zeros_(self.gamma_beta.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(h).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class SpadeResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int, n_labels: int, vendor_dim: int):
        super().__init__()
        cmid = min(cin, cout)
        self.shared = nn.Conv2d(n_labels, hidden, 3, padding=1)
        self.vendor = nn.Linear(vendor_dim, hidden)
        self.norm0 = SPADE(cin, hidden)
        self.conv0 = nn.Conv2d(cin, cmid, 3, padding=1)
        self.norm1 = SPADE(cmid, hidden)
        self.conv1 = nn.Conv2d(cmid, cout, 3, padding=1)
        self.learned_skip = cin != cout
        if self.learned_skip:  # shares norm0's modulated activations (one SPADE fewer)
            self.conv_s = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        h = F.relu(self.shared(seg) + self.vendor(v)[:, :, None, None])
        n0 = self.norm0(x, h)
        skip = self.conv_s(n0) if self.learned_skip else x
        dx = self.conv0(F.leaky_relu(n0, 0.2))
        dx = self.conv1(F.leaky_relu(self.norm1(dx, h), 0.2))
        return skip + dx


class SpadeGenerator(nn.Module):
    def __init__(self, cfg: SpadeConfig = SpadeConfig()):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_up
        chans = [cfg.ngf * min(cfg.max_mult, 2 ** (n - i)) for i in range(n + 1)]  # start .. full
        hid = [min(cfg.max_hidden, cfg.hidden * 2 ** (n - i)) for i in range(n + 1)]
        self.vendor_embed = nn.Embedding(cfg.n_vendors, cfg.vendor_dim)
        self.fc = nn.Linear(cfg.z_dim + cfg.vendor_dim, chans[0] * cfg.start * cfg.start)
        self.head = SpadeResBlock(chans[0], chans[0], hid[0], cfg.n_labels, cfg.vendor_dim)
        self.ups = nn.ModuleList(
            SpadeResBlock(chans[i], chans[i + 1], hid[i + 1], cfg.n_labels, cfg.vendor_dim) for i in range(n)
        )
        self.out = nn.Conv2d(chans[-1], 1, 3, padding=1)

    def forward(self, onehot: torch.Tensor, vendor: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """onehot (B, L, S, S) float; vendor (B,) long; z (B, z_dim) or None (random)."""
        b = onehot.shape[0]
        if z is None:
            z = torch.randn(b, self.cfg.z_dim, device=onehot.device, dtype=onehot.dtype)
        v = self.vendor_embed(vendor)
        x = self.fc(torch.cat([z, v], 1)).view(b, -1, self.cfg.start, self.cfg.start)
        x = self.head(x, onehot, v)
        for blk in self.ups:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = blk(x, onehot, v)
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


def _sn(m: nn.Module, on: bool) -> nn.Module:
    return nn.utils.spectral_norm(m) if on else m


class PatchDiscriminator(nn.Module):
    def __init__(self, cin: int, ndf: int, n_layers: int, sn: bool, gn: bool = False):
        super().__init__()
        layers = [nn.Sequential(_sn(nn.Conv2d(cin, ndf, 4, 2, 1), sn), nn.LeakyReLU(0.2))]
        c = ndf
        for i in range(1, n_layers):
            c2 = min(c * 2, ndf * 8)
            stride = 2 if i < n_layers - 1 else 1
            norm = [nn.GroupNorm(min(8, c2 // 4), c2)] if gn else []  # per sample: no statistics shared across the batch
            layers.append(nn.Sequential(_sn(nn.Conv2d(c, c2, 4, stride, 1), sn), *norm, nn.LeakyReLU(0.2)))
            c = c2
        layers.append(_sn(nn.Conv2d(c, 1, 4, 1, 1), sn))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, cfg: SpadeConfig = SpadeConfig()):
        super().__init__()
        self.cfg = cfg
        cin = 1 + cfg.n_labels + cfg.n_vendors
        self.ds = nn.ModuleList(PatchDiscriminator(cin, cfg.ndf, cfg.d_layers, cfg.d_spectral_norm, cfg.d_groupnorm) for _ in range(cfg.num_d))

    def forward(self, image: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor) -> list[list[torch.Tensor]]:
        vmap = F.one_hot(vendor, self.cfg.n_vendors).to(image.dtype)[:, :, None, None].expand(-1, -1, *image.shape[-2:])
        x = torch.cat([image, onehot, vmap], 1)
        out = []
        for i, d in enumerate(self.ds):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


def onehot(mask: torch.Tensor, n_labels: int = N_LABELS) -> torch.Tensor:
    """(B, S, S) long canonical labels -> (B, L, S, S) float one-hot."""
    return F.one_hot(mask.long().clamp(0, n_labels - 1), n_labels).permute(0, 3, 1, 2).float()


# --- losses -----------------------------------------------------------------------------------

def d_hinge(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    loss = 0.0
    for r, f in zip(real, fake):
        loss = loss + F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean()
    return loss / len(real)


def g_hinge(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(-f[-1].mean() for f in fake) / len(fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    loss = 0.0
    n = 0
    for r, f in zip(real, fake):
        for rf, ff in zip(r[:-1], f[:-1]):
            loss = loss + F.l1_loss(ff, rf.detach())
            n += 1
    return loss / max(n, 1)


def lowpass_l1(fake: torch.Tensor, real: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """L1 between 4×-downsampled images: anchors contrast and layout, leaves texture to the GAN.

    It stands in for SPADE's VGG perceptual loss, whose ImageNet weights are not
    available offline (and are not trained on MRI anyway).
    """
    return F.l1_loss(F.avg_pool2d(fake, factor), F.avg_pool2d(real, factor))


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@dataclass
class LossWeights:
    adv: float = 1.0
    fm: float = 10.0
    lowpass: float = 10.0
    extra: dict = field(default_factory=dict)

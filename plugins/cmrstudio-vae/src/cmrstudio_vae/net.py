"""The network: a small conditional VAE, mask -> image.

The encoder q(z | image, mask) sees the image and its one-hot mask and gives a style latent;
the decoder p(image | z, mask) starts from z on an 8×8 grid and, at every scale up to the frame
(8, 16, 32, 64, 128), concatenates the one-hot mask pooled to that scale, so the anatomy comes
from the mask and only the appearance (brightness, contrast, texture) from z. At render time z is
drawn from N(0, I) with the seed. About 1.0 M parameters (4.1 MB in float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    size: int = 128
    n_labels: int = 4
    z_dim: int = 32
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)  # the frame, /2, /4, /8, /16 (=8×8 for 128)

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        cfg = cls(**known)
        if cfg.size % (2 ** (len(cfg.channels) - 1)) or cfg.size < 2 ** len(cfg.channels):
            raise ValueError(f"size {cfg.size} is not divisible down {len(cfg.channels) - 1} times")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


def _groups(c: int) -> int:
    import math

    return math.gcd(c, 8)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU())


class CondVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch, L = cfg.channels, cfg.n_labels
        enc, cin = [], 1 + L
        for c in ch:
            enc += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.GroupNorm(_groups(c), c), nn.SiLU()]
            cin = c
        self.encoder = nn.Sequential(*enc)  # -> (ch[-1], size/32, size/32)
        self.bottom = cfg.size // 2 ** len(ch)
        self.to_stats = nn.Linear(ch[-1] * self.bottom ** 2, 2 * cfg.z_dim)
        self.start = cfg.size // 2 ** (len(ch) - 1)  # the decoder's first grid (8 for 128)
        self.from_z = nn.Linear(cfg.z_dim, ch[-1] * self.start ** 2)
        dec, cin = [], ch[-1]
        for c in reversed(ch):
            dec.append(nn.Sequential(_block(cin + L, c), _block(c, c)))
            cin = c
        self.decoder = nn.ModuleList(dec)
        self.out = nn.Conv2d(cin + L, 1, 3, padding=1)

    def encode(self, image: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([image, onehot], 1)).flatten(1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 6)

    def decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(z.shape[0], self.cfg.channels[-1], self.start, self.start)
        for i, blk in enumerate(self.decoder):
            if i:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = blk(torch.cat([h, F.adaptive_avg_pool2d(onehot, int(h.shape[-1]))], 1))
        return torch.tanh(self.out(torch.cat([h, onehot], 1)))  # [-1, 1]

    def forward(self, onehot: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Render: one-hot masks (B, L, N, N) and latents (B, z_dim) -> images (B, 1, N, N) in [-1, 1]."""
        return self.decode(z, onehot)


def onehot(masks: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Label maps (B, N, N) int -> (B, L, N, N) float."""
    return F.one_hot(masks.long(), n_labels).permute(0, 3, 1, 2).float()

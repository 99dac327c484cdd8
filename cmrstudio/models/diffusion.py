"""A mask-conditioned denoising U-Net, shared by the diffusion and the flow-matching models.

Conditioning (after the semantic diffusion model of Wang et al., 2022, "Semantic Image
Synthesis via Diffusion Models", made lean for CPU sampling):

* **the mask**, as a one-hot map, enters twice: concatenated to the noisy image at the
  input (so the encoder sees the layout from its first layer, which makes a small
  network learn fast), and through spatially-adaptive normalisation in **every decoder
  block** (GroupNorm without affine, then a per-pixel scale and shift predicted from the
  one-hot resized to that scale), so the layout is re-imposed at every resolution on the
  way up and does not wash out;
* **the vendor style** is an embedding added to the time embedding, which scales and
  shifts every block (FiLM);
* **classifier-free guidance**: during training the mask is replaced by an all-zero map
  (no label at all, distinct from "background") for a fraction of samples; at sampling
  the guided prediction is ``uncond + s · (cond − uncond)`` with guidance scale ``s``.

GroupNorm everywhere (no BatchNorm, no spectral norm): a single sample normalises as a
training batch does, and the network is acceptable to Opacus for DP-SGD.

The same network serves two objectives (:mod:`cmrstudio.models.sampling`): a
variance-preserving diffusion with a cosine schedule and v-prediction (sampled with
DDIM), and rectified flow (velocity along the straight path from noise to image,
sampled with an Euler or Heun ODE solver). ``t`` is continuous in [0, 1] for both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrstudio.anatomy import LABELS, VENDORS

N_LABELS = len(LABELS)
N_VENDORS = len(VENDORS)


@dataclass
class DiffusionConfig:
    """Architecture options, stored in the model card and used to rebuild the net."""

    size: int = 128
    base: int = 40  # channels at the first level
    mults: tuple[int, ...] = (1, 2, 3, 4)  # channel multiplier per level (one level per halving)
    blocks: int = 1  # residual blocks per level (encoder; the decoder has one more)
    attention: bool = True  # self-attention at the lowest resolution
    heads: int = 4
    groups: int = 8
    spade_hidden: int = 32
    time_dim: int = 128
    n_labels: int = N_LABELS
    n_vendors: int = N_VENDORS
    mask_input: bool = True  # one-hot concatenated to the noisy image
    patch: int = 2  # pixel-unshuffle at the input (and shuffle at the output): the U-Net runs at size/patch
    cond_channels: int | None = None  # conditioning channels (None: the n_labels one-hot; scene models: heart, tissue classes, context)
    channels: int = 1  # channels of what is generated (1: an image; the tissue-class prior: one per class)
    norm: str = "group"  # "group" (GroupNorm) or "pixel" (each pixel's channels: the same at any canvas size, fully convolutional)

    @property
    def n_cond(self) -> int:
        return self.n_labels if self.cond_channels is None else int(self.cond_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if "mults" in kw:
            kw["mults"] = tuple(int(m) for m in kw["mults"])
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        levels = len(self.mults) - 1
        if self.size % (self.patch * 2 ** levels):
            raise ValueError(f"size {self.size} is not divisible by patch {self.patch} × 2**{levels}")
        if any(self.base * m % self.groups for m in self.mults):
            raise ValueError(f"every level's channels must be divisible by groups={self.groups}")
        if self.norm not in ("group", "pixel"):
            raise ValueError(f"norm {self.norm!r} must be 'group' or 'pixel'")


PRESETS = {
    # CPU: 7.9 M parameters (32 MB), about 0.1 s a guided network call at 128×128 on 2 cores.
    "lite": DiffusionConfig(),
    # Tests and smoke runs: 0.5 M parameters.
    "tiny": DiffusionConfig(base=16, mults=(1, 2, 2), attention=False, spade_hidden=16, time_dim=64),
    # GPU: wider and deeper, same structure.
    "base": DiffusionConfig(base=64, mults=(1, 2, 2, 4), blocks=2, spade_hidden=64, time_dim=256),
    # Scene models (whole field of view, fully convolutional): conditioned on heart, tissue classes and context.
    "scene": DiffusionConfig(base=40, mults=(1, 2, 3, 4), blocks=1, attention=False, spade_hidden=32, norm="pixel",
                             cond_channels=10),
    "scene-tiny": DiffusionConfig(base=16, mults=(1, 2, 2), attention=False, spade_hidden=16, time_dim=64, norm="pixel",
                                  cond_channels=10),
    # The fine tissue-class prior: the five classes on 2.5 mm cells (2 px of the live frame), given the heart's label
    # fractions, the scan's extent and the coarse prior's layout on those cells (size: training windows, in cells).
    "layout-fine": DiffusionConfig(size=96, base=32, mults=(1, 2, 2, 4), blocks=1, attention=False, spade_hidden=16, time_dim=64,
                                   patch=2, norm="pixel", cond_channels=9, channels=5),
    "layout-fine-tiny": DiffusionConfig(size=32, base=16, mults=(1, 2, 2), blocks=1, attention=False, spade_hidden=8, time_dim=32,
                                        patch=2, norm="pixel", cond_channels=9, channels=5),
}


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of continuous t in [0, 1] (scaled to 0..1000 as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class PixelNorm(nn.Module):
    """Normalise each pixel's channels (a LayerNorm over channels): no statistics over the image, so a
    network behaves the same on a training window and on a whole scene of any size."""

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(1, keepdim=True)
        x = d * torch.rsqrt(d.pow(2).mean(1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight[:, None, None] + self.bias[:, None, None]
        return x


def make_norm(kind: str, groups: int, channels: int, affine: bool = True) -> nn.Module:
    return PixelNorm(channels, affine) if kind == "pixel" else nn.GroupNorm(groups, channels, affine=affine)


class SpatialNorm(nn.Module):
    """GroupNorm (or PixelNorm) without affine, then per-pixel (1 + gamma, beta) from the conditioning maps."""

    def __init__(self, channels: int, groups: int, n_labels: int, hidden: int, norm: str = "group"):
        super().__init__()
        self.norm = make_norm(norm, groups, channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(n_labels, hidden, 3, padding=1), nn.SiLU())
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.gamma_beta.weight)
        nn.init.zeros_(self.gamma_beta.bias)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, maps: dict | None = None) -> torch.Tensor:
        key = (self, tuple(x.shape))  # batch, channels and size: maps of another call's shape are never taken
        if maps is not None and key in maps:
            scale, beta = maps[key]
        else:
            if seg.shape[-1] != x.shape[-1]:  # label fractions: keeps sub-pixel boundaries at coarse scales
                seg = F.adaptive_avg_pool2d(seg, x.shape[-2:])
            gamma, beta = self.gamma_beta(self.shared(seg)).chunk(2, dim=1)
            scale = 1 + gamma
            if maps is not None:
                maps[key] = (scale, beta)
        return self.norm(x) * scale + beta


class ResBlock(nn.Module):
    """Two 3×3 convs; the time/vendor embedding scales and shifts the second norm.

    With ``spatial`` the norms are :class:`SpatialNorm` (decoder), else GroupNorm (encoder).
    """

    def __init__(self, cin: int, cout: int, emb: int, groups: int, spatial: bool, n_labels: int, hidden: int, norm: str = "group"):
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.norm0 = SpatialNorm(cin, groups, n_labels, hidden, norm)
            self.norm1 = SpatialNorm(cout, groups, n_labels, hidden, norm)
        else:
            self.norm0 = make_norm(norm, groups, cin)
            self.norm1 = make_norm(norm, groups, cout)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def _norm(self, norm: nn.Module, x: torch.Tensor, seg: torch.Tensor, maps: dict | None) -> torch.Tensor:
        return norm(x, seg, maps) if self.spatial else norm(x)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, seg: torch.Tensor, maps: dict | None = None) -> torch.Tensor:
        h = self.conv0(F.silu(self._norm(self.norm0, x, seg, maps)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self._norm(self.norm1, h, seg, maps) * (1 + scale) + shift
        h = self.conv1(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class CondUNet(nn.Module):
    """eps/v/velocity predictor: (x_t, t, one-hot mask, vendor) -> same shape as x_t."""

    def __init__(self, cfg: DiffusionConfig = DiffusionConfig()):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.size_unit = cfg.patch * 2 ** (len(cfg.mults) - 1)  # an input's sides are multiples of this
        L, hid, g, nk = cfg.n_cond, cfg.spade_hidden, cfg.groups, cfg.norm
        chans = [cfg.base * m for m in cfg.mults]
        self.time = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(), nn.Linear(cfg.time_dim, cfg.time_dim))
        self.vendor = nn.Embedding(cfg.n_vendors, cfg.time_dim)
        p = cfg.patch
        self.inp = nn.Conv2d((cfg.channels + (L if cfg.mask_input else 0)) * p * p, chans[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips = [chans[0]]
        c = chans[0]
        for i, ch in enumerate(chans):
            level = nn.ModuleList()
            for _ in range(cfg.blocks):
                level.append(ResBlock(c, ch, cfg.time_dim, g, False, L, hid, nk))
                c = ch
                skips.append(c)
            if i < len(chans) - 1:
                level.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
            self.down.append(level)

        self.mid0 = ResBlock(c, c, cfg.time_dim, g, True, L, hid, nk)
        self.mid_attn = Attention(c, cfg.heads, g) if cfg.attention else nn.Identity()
        self.mid1 = ResBlock(c, c, cfg.time_dim, g, True, L, hid, nk)

        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            level = nn.ModuleList()
            for _ in range(cfg.blocks + 1):
                level.append(ResBlock(c + skips.pop(), ch, cfg.time_dim, g, True, L, hid, nk))
                c = ch
            if i > 0:
                level.append(nn.Upsample(scale_factor=2, mode="nearest"))
                level.append(nn.Conv2d(c, c, 3, padding=1))
            self.up.append(level)
        self.out_norm = make_norm(nk, g, c)
        self.out = nn.Conv2d(c, cfg.channels * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor,
                maps: dict | None = None) -> torch.Tensor:
        """x (B,C,N,N); t (B,) in [0,1]; onehot (B,L,N,N) conditioning maps, all zeros = none; vendor (B,) long.

        ``maps``: a dict kept by a sampler for one ``onehot`` over all its steps. The decoder's per-pixel
        scale and shift depend on the conditioning alone, so they are computed at the first step, stored
        there, and reused by every later step (the same values, without their convolutions)."""
        emb = self.time(timestep_embedding(t, self.cfg.time_dim)) + self.vendor(vendor)
        p = self.cfg.patch
        h = self.inp(F.pixel_unshuffle(torch.cat([x, onehot], 1) if self.cfg.mask_input else x, p))
        hs = [h]
        for level in self.down:
            for m in level:
                h = m(h, emb, onehot) if isinstance(m, ResBlock) else m(h)
                hs.append(h)
        h = self.mid1(self.mid_attn(self.mid0(h, emb, onehot, maps)), emb, onehot, maps)
        for level in self.up:
            for m in level:
                h = m(torch.cat([h, hs.pop()], 1), emb, onehot, maps) if isinstance(m, ResBlock) else m(h)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), p)


class CategoricalUNet(CondUNet):
    """A flow model over categorical maps (the fine tissue classes, one-hot in [-1, 1]): the same network, whose output
    is each cell's class logits given x_t. Trained with cross-entropy against the true classes (a classifier at every t:
    it learns crisp classes far sooner than a velocity regression does); to a sampler it is a rectified-flow model whose
    velocity is the one to the expected one-hot, ``(x_t - (2 p - 1)) / t``, so the last step lands on the probabilities."""

    categorical = True

    def logits(self, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor, maps: dict | None = None) -> torch.Tensor:
        return super().forward(x, t, onehot, vendor, maps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor,
                maps: dict | None = None) -> torch.Tensor:
        x0 = 2.0 * torch.softmax(self.logits(x, t, onehot, vendor, maps).float(), dim=1) - 1.0
        return (x.float() - x0) / t.float().clamp(min=1e-3)[:, None, None, None]

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
    arch: str = "classic"  # "classic": z -> 8x8 -> upsampling SPADE blocks; "unet": fully convolutional encoder-decoder (scene models)
    cond_channels: int | None = None  # conditioning channels (None: the n_labels one-hot; scene models: heart, tissue classes, context)
    levels: int = 3  # "unet": halvings between the window and the bottleneck
    d_stem: bool = False  # a stride-1 first layer in the discriminator: it then sees patterns of a pixel's period (a 2-pixel grid)
    # "unet": how the decoder doubles its maps. Bilinear (align_corners=False) weighs neighbours 3:1 and 1:3 in turn, so
    # the differences between output pixels alternate between a quarter of the central and half of the forward
    # difference: a period-2 ripple in gradient energy that the last blocks amplify. Bicubic leaves far less of it.
    upsample: str = "bilinear"
    # "classic": the latent z also enters every block's SPADE (beside the vendor, as a bias on its hidden features), so
    # that a seed styles the whole image at every scale; without it z only seeds the first 8×8 map, which the
    # generator learns to ignore (MS-SSIM 0.94 between seeds).
    style_z: bool = False

    def __post_init__(self) -> None:
        if self.upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"upsample {self.upsample!r}: use 'bilinear' or 'bicubic'")

    @property
    def n_cond(self) -> int:
        return self.n_labels if self.cond_channels is None else int(self.cond_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpadeConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def n_up(self) -> int:
        if self.arch == "unet":
            if self.size % 2 ** self.levels:
                raise ValueError(f"size {self.size} must be divisible by 2**{self.levels}")
            return self.levels
        n = math.log2(self.size / self.start)
        if n != int(n) or n < 1:
            raise ValueError(f"size {self.size} must be start {self.start} times a power of two")
        return int(n)


PRESETS = {
    # CPU live path: 2.4 M parameters (most in the 8×8 projection), ~40 ms a frame on 2 cores.
    "lite": SpadeConfig(),
    # The same, with the latent styling every block (style_z), so that seeds can give different images.
    "lite-style": SpadeConfig(style_z=True),
    # GPU / HQ: wider (6.3 M parameters), same structure.
    "base": SpadeConfig(ngf=32, hidden=64, ndf=64),
    # Scene models (whole field of view, fully convolutional; heart, tissue classes and context): the live path.
    "scene": SpadeConfig(arch="unet", ngf=24, hidden=16, max_hidden=64, max_mult=4, levels=4, cond_channels=10, ndf=48, d_stem=True,
                         upsample="bicubic"),
    "scene-tiny": SpadeConfig(arch="unet", ngf=8, hidden=8, max_hidden=16, max_mult=2, levels=2, cond_channels=10, ndf=8, num_d=1, d_layers=2),
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
        """``vendor_dim``: the width of the style vector biasing the SPADE features (the vendor embedding, with z when
        the generator's ``style_z`` is on)."""
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
        style = cfg.vendor_dim + (cfg.z_dim if cfg.style_z else 0)
        self.head = SpadeResBlock(chans[0], chans[0], hid[0], cfg.n_labels, style)
        self.ups = nn.ModuleList(
            SpadeResBlock(chans[i], chans[i + 1], hid[i + 1], cfg.n_labels, style) for i in range(n)
        )
        self.out = nn.Conv2d(chans[-1], 1, 3, padding=1)

    def forward(self, onehot: torch.Tensor, vendor: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """onehot (B, L, S, S) float; vendor (B,) long; z (B, z_dim) or None (random)."""
        b = onehot.shape[0]
        if z is None:
            z = torch.randn(b, self.cfg.z_dim, device=onehot.device, dtype=onehot.dtype)
        v = self.vendor_embed(vendor)
        zv = torch.cat([z, v], 1)
        x = self.fc(zv).view(b, -1, self.cfg.start, self.cfg.start)
        style = zv if self.cfg.style_z else v
        x = self.head(x, onehot, style)
        for blk in self.ups:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = blk(x, onehot, style)
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


class PixelNorm2d(nn.Module):
    """Each pixel's channels normalised (no statistics over the image: the same on a window and a whole scene)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        return (x - mu) * torch.rsqrt((x - mu).pow(2).mean(1, keepdim=True) + 1e-5)


class ModSPADE(nn.Module):
    """PixelNorm, then per-pixel gamma/beta from the shared hidden conditioning features."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = PixelNorm2d()
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.gamma_beta.weight)
        nn.init.zeros_(self.gamma_beta.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(h).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class SceneBlock(nn.Module):
    """A SPADE residual block with per-pixel noise (StyleGAN's noise inputs: texture that differs by seed)
    and a style bias (latent z and vendor) on its hidden conditioning features. The input (upsampled
    features and the encoder's skip) is first fused by a 1×1 convolution, so SPADE works on ``cout``
    channels only."""

    def __init__(self, cin: int, cout: int, hidden: int, n_cond: int, style_dim: int):
        super().__init__()
        self.fuse = nn.Conv2d(cin, cout, 1)
        self.shared = nn.Conv2d(n_cond, hidden, 3, padding=1)
        self.style = nn.Linear(style_dim, hidden)
        self.norm0 = ModSPADE(cout, hidden)
        self.conv0 = nn.Conv2d(cout, cout, 3, padding=1)
        self.noise0 = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.norm1 = ModSPADE(cout, hidden)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.noise1 = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``cond`` and ``noise`` come at this block's resolution (see :meth:`SceneGenerator.forward`)."""
        x = self.fuse(x)
        h = F.relu(self.shared(cond) + self.style(style)[:, :, None, None])
        dx = self.conv0(F.leaky_relu(self.norm0(x, h), 0.2)) + self.noise0 * noise
        dx = self.conv1(F.leaky_relu(self.norm1(dx, h), 0.2)) + self.noise1 * noise
        return x + dx


class SceneGenerator(nn.Module):
    """Fully convolutional SPADE generator for whole scenes and windows (the live path).

    An encoder reads the conditioning maps (heart one-hot, tissue-class fractions, context image
    and where it is valid) down ``levels`` halvings; a decoder of :class:`SceneBlock` goes back up
    with bilinear or bicubic upsampling (``upsample``; no nearest-neighbour grid), U-Net skips, SPADE modulation from the
    conditioning at every scale, per-pixel noise and a style bias from z and the vendor. No
    statistics are taken over the image, so a window and a whole scene render alike.
    """

    def __init__(self, cfg: SpadeConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_up
        C = cfg.n_cond
        chans = [cfg.ngf * min(cfg.max_mult, 2 ** i) for i in range(n + 1)]  # full .. bottleneck
        hid = [min(cfg.max_hidden, cfg.hidden * 2 ** i) for i in range(n + 1)]
        style = cfg.z_dim + cfg.vendor_dim
        self.vendor_embed = nn.Embedding(cfg.n_vendors, cfg.vendor_dim)
        self.inp = nn.Conv2d(C + 1, chans[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 4, stride=2, padding=1) for i in range(n))
        self.mid = SceneBlock(chans[n], chans[n], hid[n], C, style)
        self.ups = nn.ModuleList(SceneBlock(chans[i + 1] + chans[i], chans[i], hid[i], C, style) for i in reversed(range(n)))
        self.out = nn.Conv2d(chans[0], 1, 3, padding=1)

    def forward(self, cond: torch.Tensor, vendor: torch.Tensor, z: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """cond (B, C, S, S); vendor (B,) long; z (B, z_dim) or None; noise (B, 1, S, S) or None (random)."""
        b = cond.shape[0]
        if z is None:
            z = torch.randn(b, self.cfg.z_dim, device=cond.device, dtype=cond.dtype)
        if noise is None:
            noise = torch.randn(b, 1, *cond.shape[-2:], device=cond.device, dtype=cond.dtype)
        style = torch.cat([z, self.vendor_embed(vendor)], 1)
        h = F.leaky_relu(self.inp(torch.cat([cond, noise], 1)), 0.2)
        skips = [h]
        for d in self.down:
            h = F.leaky_relu(d(h), 0.2)
            skips.append(h)
        conds, noises = [cond], [noise]  # conditioning (label fractions) and unit-variance noise at every level
        for _ in self.down:
            conds.append(F.avg_pool2d(conds[-1], 2))
            noises.append(F.avg_pool2d(noises[-1], 2) * 2.0)
        h = self.mid(skips.pop(), conds.pop(), style, noises.pop())
        for blk in self.ups:
            s = skips.pop()
            h = F.interpolate(h, scale_factor=2.0, mode=self.cfg.upsample, align_corners=False)  # sizes are multiples of 2**levels
            h = blk(torch.cat([h, s], 1), conds.pop(), style, noises.pop())
        return torch.tanh(self.out(F.leaky_relu(h, 0.2)))


def build_generator(cfg: SpadeConfig) -> nn.Module:
    return SceneGenerator(cfg) if cfg.arch == "unet" else SpadeGenerator(cfg)


def _sn(m: nn.Module, on: bool) -> nn.Module:
    return nn.utils.spectral_norm(m) if on else m


class PatchDiscriminator(nn.Module):
    """PatchGAN. A strided first layer is blind to patterns of a 2-pixel period (they alias onto its sampling grid);
    with ``stem`` a stride-1 layer looks at full resolution first, so a generator's upsampling grid is seen and punished."""

    def __init__(self, cin: int, ndf: int, n_layers: int, sn: bool, gn: bool = False, stem: bool = False):
        super().__init__()
        layers = [nn.Sequential(_sn(nn.Conv2d(cin, ndf, 3, 1, 1), sn), nn.LeakyReLU(0.2))] if stem else []
        layers.append(nn.Sequential(_sn(nn.Conv2d(ndf if stem else cin, ndf, 4, 2, 1), sn), nn.LeakyReLU(0.2)))
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

    def footprint(self, share: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, 1, h, w) on the output grid: ``share`` averaged over each output's receptive field, with the
        convolutions' own kernels, strides and zero padding (so the padding counts as 0)."""
        for layer in self.layers:
            conv = next(m for m in layer.modules() if isinstance(m, nn.Conv2d))
            share = F.avg_pool2d(share, conv.kernel_size, conv.stride, conv.padding)
        return share


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, cfg: SpadeConfig = SpadeConfig()):
        super().__init__()
        self.cfg = cfg
        cin = 1 + cfg.n_cond + cfg.n_vendors
        self.ds = nn.ModuleList(PatchDiscriminator(cin, cfg.ndf, cfg.d_layers, cfg.d_spectral_norm, cfg.d_groupnorm, cfg.d_stem and i == 0)
                                for i in range(cfg.num_d))

    def forward(self, image: torch.Tensor, onehot: torch.Tensor, vendor: torch.Tensor) -> list[list[torch.Tensor]]:
        vmap = F.one_hot(vendor, self.cfg.n_vendors).to(image.dtype)[:, :, None, None].expand(-1, -1, *image.shape[-2:])
        x = torch.cat([image, onehot, vmap], 1)
        out = []
        for i, d in enumerate(self.ds):
            if i:
                x = _half(x)
            out.append(d(x))
        return out

    def footprints(self, share: torch.Tensor) -> list[torch.Tensor]:
        """Per scale, ``share`` (B, 1, H, W) averaged over each output's receptive field, as :meth:`forward` sees the input."""
        out = []
        for i, d in enumerate(self.ds):
            if i:
                share = _half(share)
            out.append(d.footprint(share))
        return out


def _half(x: torch.Tensor) -> torch.Tensor:
    """The input of the next discriminator scale."""
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def onehot(mask: torch.Tensor, n_labels: int = N_LABELS) -> torch.Tensor:
    """(B, S, S) long canonical labels -> (B, L, S, S) float one-hot."""
    return F.one_hot(mask.long().clamp(0, n_labels - 1), n_labels).permute(0, 3, 1, 2).float()


# --- losses -----------------------------------------------------------------------------------

def d_hinge(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]], weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The discriminator's hinge loss over its scales; with ``weights`` (one (B, 1, h, w) map per scale, from
    :func:`region_weights`) each image's patches are averaged with those weights instead of evenly."""
    loss = 0.0
    for i, (r, f) in enumerate(zip(real, fake)):
        w = None if weights is None else weights[i]
        loss = loss + _patch_mean(F.relu(1 - r[-1]), w) + _patch_mean(F.relu(1 + f[-1]), w)
    return loss / len(real)


def g_hinge(fake: list[list[torch.Tensor]], weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    return sum(-_patch_mean(f[-1], None if weights is None else weights[i]) for i, f in enumerate(fake)) / len(fake)


def _patch_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return x.mean()
    return ((x * w).flatten(1).sum(1) / w.flatten(1).sum(1)).mean()


def region_weights(D: MultiScaleDiscriminator, repaint: torch.Tensor) -> list[torch.Tensor]:
    """Per discriminator scale, the repainted share of each output's receptive field: ``repaint`` (B, 1, H, W) in
    [0, 1] pushed through ``D``'s own pooling geometry (:meth:`MultiScaleDiscriminator.footprints`), over the share of
    that field inside the window. In an in-patient window real and composite agree outside the repainted region, so
    outputs that see none of it say nothing; the hinge losses averaged with these weights look where the two differ,
    the seam included. A window repainted everywhere weighs every output alike (the plain mean). A window with nothing
    repainted also weighs them alike, so an image's mean is always defined."""
    repaint = repaint.float()
    inside = D.footprints(torch.ones_like(repaint[:1]))
    maps = []
    for share, full in zip(D.footprints(repaint), inside):
        w = (share / full).clamp(0.0, 1.0)
        maps.append(torch.where(w.flatten(1).sum(1)[:, None, None, None] > 0, w, torch.ones_like(w)))
    return maps


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


def grid_maps(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Where, and how strongly, a batch's edges are locked to the pixel grid at period 2: (3, H/block, W/block).

    The squared difference between neighbouring pixels, averaged over the batch, is multiplied by (-1)^row,
    (-1)^column and both, and averaged over ``block``-pixel blocks, over the batch's mean energy. Real
    scans put edges anywhere, so their maps tend to 0 over many images; an upsampling grid (the artefact
    :func:`cmrstudio.evaluate.realism.grid_artefact` measures) draws edges stronger on even than on odd pixels
    in every image, which stays. The normaliser is a constant for autograd: a network cannot lower the
    maps by adding high-frequency noise everywhere.
    """
    x = x.float()
    e = (torch.diff(x, dim=-1)[..., :-1, :] ** 2 + torch.diff(x, dim=-2)[..., :, :-1] ** 2).mean(dim=tuple(range(x.dim() - 2)))
    e = e[: e.shape[0] // 2 * 2, : e.shape[1] // 2 * 2]
    rows = 1.0 - 2.0 * (torch.arange(e.shape[0], device=e.device) % 2).to(e.dtype)[:, None]
    cols = 1.0 - 2.0 * (torch.arange(e.shape[1], device=e.device) % 2).to(e.dtype)[None, :]
    e = e / e.mean().clamp_min(1e-8).detach()
    maps = torch.stack([e * rows, e * cols, e * rows * cols])
    return F.avg_pool2d(maps[:, None], block, ceil_mode=True)[:, 0]


def grid_modulation(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    """The power of :func:`grid_maps` (0 for images with no period-2 grid, over many images)."""
    return (grid_maps(x, block) ** 2).mean()


class FeatureCritic(nn.Module):
    """A critic on frozen features (the projected-GAN idea: Sauer et al., NeurIPS 2021, with a network trained on cardiac MR
    in place of ImageNet): the first ``levels`` encoder blocks of a segmentation U-Net (``cmrstudio.models.unet.UNet``, held
    fixed), the Gram matrix of each level's features (channel by channel, averaged over the pixels: texture statistics
    with no position in them), standardised by their mean and SD over real images (:meth:`calibrate`; saved with the
    weights), and one trainable linear logit over their upper triangles. Only the head learns, so it tells renders from
    scans within tens of steps, where a critic learning its own features needs thousands. The logit says 'synthetic' (the
    machine reader's convention); images come in [-1, 1], shape (B, 1, N, N)."""

    def __init__(self, unet: nn.Module, levels: int = 3):
        super().__init__()
        if not 1 <= levels <= len(unet.downs):
            raise ValueError(f"levels {levels} must lie between 1 and the U-Net's {len(unet.downs)} encoder blocks")
        import copy

        self.enc = copy.deepcopy(nn.ModuleList(unet.downs[:levels])).eval()
        for p in self.enc.parameters():
            p.requires_grad_(False)
        widths = [blk[0].out_channels for blk in self.enc]
        self.triu = [torch.triu_indices(c, c) for c in widths]
        n = sum(c * (c + 1) // 2 for c in widths)
        self.register_buffer("mu", torch.zeros(n))
        self.register_buffer("sd", torch.ones(n))
        self.head = nn.Linear(n, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.enc.eval()  # frozen: GroupNorm has no running statistics, but keep it out of training mode all the same
        return self

    def grams(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, N) in [-1, 1] -> (B, F): every level's Gram matrix, upper triangle, concatenated."""
        out, h = [], x
        for i, blk in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2)
            h = blk(h)
            f = h.flatten(2).float()
            g = f @ f.transpose(1, 2) / f.shape[-1]
            r, c = self.triu[i]
            out.append(g[:, r, c])
        return torch.cat(out, 1)

    @torch.no_grad()
    def calibrate(self, real: torch.Tensor, chunk: int = 32) -> None:
        """Set the standardisation from real images (B, 1, N, N) in [-1, 1]: without it the Gram entries share a large
        common part and differ in scale by level, and a linear logit trained by Adam learns them slowly."""
        g = torch.cat([self.grams(real[i:i + chunk]) for i in range(0, len(real), chunk)])
        sd = g.std(0)
        self.mu.copy_(g.mean(0))
        self.sd.copy_(sd.clamp_min(1e-3 * float(sd.mean()) + 1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.grams(x) - self.mu) / self.sd
        return self.head(z / math.sqrt(z.shape[1]))[:, 0]  # so that an Adam step moves the logit by about the rate, not n times it


class GridPenalty:
    """A generator's loss against the period-2 grid that persists from batch to batch.

    One batch's :func:`grid_maps` are mostly its content; a running mean of them over batches keeps only
    what every batch shares (a grid locked to the pixels). The loss is the batch's maps projected on that
    mean, so its gradient pushes against the persisting grid and not against the content of one batch. Each map's
    projection (rows, columns, both) is cut at 0: a batch whose map no longer leans the running mean's way costs
    nothing, and an anti-phase leftover in one map does not hide a grid in another. Left linear,
    the loss has no floor, and a strong weight drives the generator past zero into a grid of opposite phase that
    the lagging mean then chases (a flow model distilled with weight 30 drew a peak ratio of 500 within 34 steps;
    gradient descent on real images drew 4.4–4.9 from a floor of 2.6).
    ``power`` is the running mean's power: the grid the generator still draws.
    """

    def __init__(self, decay: float = 0.98, block: int = 16):
        self.decay, self.block, self.ref = decay, block, None

    def __call__(self, fake: torch.Tensor) -> torch.Tensor:
        maps = grid_maps(fake, self.block)
        now = maps.detach()
        self.ref = now if self.ref is None or self.ref.shape != now.shape else self.decay * self.ref + (1 - self.decay) * now
        return (maps * self.ref).mean(dim=(1, 2)).clamp_min(0).mean()  # each of the three maps cut on its own

    @property
    def power(self) -> float:
        return 0.0 if self.ref is None else float((self.ref ** 2).mean())


def count_parameters(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@dataclass
class LossWeights:
    adv: float = 1.0
    fm: float = 10.0
    lowpass: float = 10.0
    grid: float = 0.0  # GridPenalty's weight (0: off)
    extra: dict = field(default_factory=dict)

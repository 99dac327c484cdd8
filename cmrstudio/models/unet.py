"""A small 2D U-Net for LV / MYO / RV segmentation in the synthesis frame.

It is the measuring instrument for mask faithfulness (does a synthetic image show the
anatomy that was painted?) and the studio's "segment this scan" start mask.
GroupNorm throughout (valid under DP-SGD, independent of batch size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrstudio.anatomy import LABELS


@dataclass
class UNetConfig:
    size: int = 128
    base: int = 16
    depth: int = 4  # number of downsamplings
    n_classes: int = len(LABELS)
    groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    g = min(groups, cout)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(g, cout), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(g, cout), nn.LeakyReLU(0.1, inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        ch = [cfg.base * 2 ** i for i in range(cfg.depth + 1)]
        self.downs = nn.ModuleList()
        cin = 1
        for c in ch:
            self.downs.append(_block(cin, c, cfg.groups))
            cin = c
        self.ups = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i in range(cfg.depth, 0, -1):
            self.upconv.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2))
            self.ups.append(_block(2 * ch[i - 1], ch[i - 1], cfg.groups))
        self.head = nn.Conv2d(ch[0], cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, d in enumerate(self.downs):
            x = d(x)
            if i < len(self.downs) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, blk in zip(self.upconv, self.ups):
            x = blk(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − mean soft Dice over the foreground classes."""
    p = logits.softmax(1)[:, 1:]
    t = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()[:, 1:]
    inter = (p * t).sum((0, 2, 3))
    den = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (den + eps)).mean()

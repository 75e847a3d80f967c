"""The plain eager reference for the benchmarks: the classic U-Net written the way the seed
(milesial/Pytorch-UNet) writes it - nn.Conv2d / BatchNorm2d / ReLU / MaxPool2d / ConvTranspose2d
in plain sequential code, default memory layout, no fusion.

Its parameters and buffers are declared in the same order as unetkit's
`UNet(spatial_dims=2, features=(64, 128, ...))` of any depth, so `copy_weights_from(unetkit_model)`
copies a unetkit model's state dict into it by position and the two give the same outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    """(conv3x3 => BN => ReLU) * 2"""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """Downscaling with maxpool then double conv"""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upscaling with a transposed conv, pad to the skip, concatenate, double conv"""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ReferenceUNet(nn.Module):
    """Seed-style U-Net: `depth - 1` poolings, widths `base * 2**i` (64..1024 by default)."""

    def __init__(self, n_channels: int = 1, n_classes: int = 2, base: int = 64, depth: int = 5) -> None:
        super().__init__()
        f = [base * 2**i for i in range(depth)]
        self.inc = DoubleConv(n_channels, f[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(f, f[1:]))
        self.ups = nn.ModuleList(Up(b, a) for a, b in reversed(list(zip(f, f[1:]))))
        self.outc = OutConv(f[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    @torch.no_grad()
    def copy_weights_from(self, other: nn.Module) -> "ReferenceUNet":
        """Copy `other`'s parameters and buffers by position (names differ, order and shapes match)."""
        mine, theirs = self.state_dict(), other.state_dict()
        if len(mine) != len(theirs):
            raise ValueError(f"state dicts differ in length: {len(mine)} vs {len(theirs)}")
        new = {}
        for (k, v), (k2, v2) in zip(mine.items(), theirs.items()):
            if v.shape != v2.shape:
                raise ValueError(f"shape mismatch {k} {tuple(v.shape)} vs {k2} {tuple(v2.shape)}")
            new[k] = v2.detach().clone()
        self.load_state_dict(new)
        return self


def reference_for(model: nn.Module) -> ReferenceUNet:
    """A ReferenceUNet with `model`'s weights (a unetkit 2D UNet whose widths double per level)."""
    cfg = getattr(model, "unetkit_config", {})
    feats = tuple(cfg.get("features", (64, 128, 256, 512, 1024)))
    base = feats[0]
    if feats != tuple(base * 2**i for i in range(len(feats))) or cfg.get("spatial_dims", 2) != 2:
        raise ValueError(f"the reference covers 2D U-Nets whose widths double per level, got {feats}")
    ref = ReferenceUNet(cfg.get("in_channels", 1), cfg.get("num_classes", 2), base, len(feats))
    return ref.copy_weights_from(model).train(model.training)

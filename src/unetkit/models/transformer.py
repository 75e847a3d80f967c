"""Dimension-generic transformer pieces shared by TransUNet, Swin-UNet and nnFormer.

Token maps are channels-last, (N, *S, C) with len(S) == spatial_dims; token sequences are
(N, T, C). `to_channels_last` / `to_channels_first` convert from / to the (N, C, *S) maps the
convolutional blocks use. Attention always goes through
`torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unetkit.models import layers

MASK_VALUE = -100.0  # additive mask between tokens of different shifted-window regions (Liu et al. 2021)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) -> (N, *S, C)."""
    return x.permute(0, *range(2, x.dim()), 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, *S, C) -> (N, C, *S)."""
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for a whole
    sample with probability `p` and scale the kept ones by 1 / (1 - p); identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Swin's stochastic-depth rule: rates rising linearly from 0 to `rate` over all blocks,
    split per stage. -> one list of rates per stage."""
    total = sum(depths)
    flat = [rate * i / max(1, total - 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear (with dropout). (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class Attention(nn.Module):
    """Multi-head attention: queries from `x`, keys and values from `context` (default `x`).

    x (B, T, C), context (B, T', C), mask additive and broadcastable to (B, heads, T, T')
    -> (B, T, C).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, dropout: float = 0.0,
                 query_projection: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        # nnFormer's skip attention uses the (normalised) queries as they are: no projection
        self.q = nn.Linear(dim, dim, bias=qkv_bias) if query_projection else nn.Identity()
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, t, c = x.shape
        q = self.q(x).reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block with global attention (Dosovitskiy et al. 2021). (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---- windows ---------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) with S divisible by `window` -> (B * num_windows, prod(window), C)."""
    b, *size, c = x.shape
    d = len(size)
    shape = [b]
    for s, w in zip(size, window):
        shape += [s // w, w]
    x = x.reshape(*shape, c)
    order = [0, *(1 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)), 2 * d + 1]
    return x.permute(order).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * num_windows, prod(window), C) -> (B, *size, C)."""
    d = len(size)
    counts = [s // w for s, w in zip(size, window)]
    x = windows.reshape(-1, *counts, *window, windows.shape[-1])
    order = [0, *itertools.chain.from_iterable((1 + i, 1 + d + i) for i in range(d)), 2 * d + 1]
    return x.permute(order).reshape(-1, *size, windows.shape[-1])


def relative_position_index(window: Sequence[int], table_window: Sequence[int]) -> torch.Tensor:
    """(T, T) indices into a relative-position table sized for `table_window` (>= `window`)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (d, T, T)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for i, tw in enumerate(table_window):
        stride = math.prod(2 * w - 1 for w in table_window[i + 1:])
        index += (rel[i] + tw - 1) * stride
    return index


def shifted_window_mask(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """(num_windows, T, T) additive mask keeping attention inside the regions that a cyclic
    shift by `shift` brought together (Liu et al. 2021, Swin, sec. 3.2)."""
    labels = torch.zeros(1, *size, 1)
    ranges = [
        [slice(0, -w), slice(-w, -s), slice(-s, None)] if s > 0 else [slice(None)]
        for w, s in zip(window, shift)
    ]
    for n, region in enumerate(itertools.product(*ranges)):
        labels[(slice(None), *region, slice(None))] = n
    windows = window_partition(labels, window).squeeze(-1)  # (nW, T)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowBlock(nn.Module):
    """Swin block: (shifted-)window multi-head attention with a relative position bias, then an
    MLP, both pre-norm with residuals (Liu et al. 2021). Dimension-generic.

    Windows larger than the map shrink to it (and then do not shift); maps are zero-padded at
    the end up to a multiple of the window. With `context` (the "skip attention" of nnFormer)
    the keys and values come from `context`, a map of the same size as `x`, and `residual`
    (default `x`) is what the attention output is added to; `query_projection=False` feeds the
    normalised `x` to the attention as queries directly (nnFormer's `WindowAttention_kv`).
    x (B, *S, C) -> (B, *S, C).
    """

    def __init__(self, spatial_dims: int, dim: int, heads: int, window: int | Sequence[int] = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0,
                 query_projection: bool = True) -> None:
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.window = layers.as_tuple(window, spatial_dims)
        self.shift = shift
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=0.0, query_projection=query_projection)
        self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in self.window), heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def _windowed(self, x: torch.Tensor, window: list[int], shift: list[int]) -> tuple[torch.Tensor, list[int]]:
        size = list(x.shape[1:-1])
        pads: list[int] = [0, 0]
        for s, w in zip(reversed(size), reversed(window)):
            pads += [0, (-s) % w]
        if any(pads):
            x = F.pad(x, pads)
        if any(shift):
            x = torch.roll(x, [-s for s in shift], dims=list(range(1, x.dim() - 1)))
        return window_partition(x, window), list(x.shape[1:-1])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        b, *size, c = x.shape
        window = [min(w, s) for w, s in zip(self.window, size)]
        shift = [w // 2 if self.shift and s > w else 0 for w, s in zip(window, size)]
        windows, padded = self._windowed(self.norm1(x), window, shift)
        ctx = None if context is None else self._windowed(self.norm1(context), window, shift)[0]
        t = windows.shape[1]
        index = relative_position_index(window, self.window).to(x.device)
        mask = self.bias_table[index.reshape(-1)].reshape(t, t, self.heads).permute(2, 0, 1)[None]
        if any(shift):
            mask = mask + shifted_window_mask(padded, window, shift).to(x)[:, None]
        num_windows = windows.shape[0] // b
        mask = mask.expand(num_windows, -1, -1, -1).repeat(b, 1, 1, 1)
        out = window_reverse(self.attn(windows, ctx, mask), window, padded)
        if any(shift):
            out = torch.roll(out, shift, dims=list(range(1, out.dim() - 1)))
        out = out[(slice(None), *(slice(0, s) for s in size), slice(None))]
        x = (x if residual is None else residual) + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalBlock(TransformerBlock):
    """Global self-attention over every token of a map (nnFormer's GV-SA). (B, *S, C) -> (B, *S, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, *size, c = x.shape
        return super().forward(x.reshape(b, -1, c)).reshape(b, *size, c)


# ---- patches ---------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: conv with kernel = stride = `patch_size` (+ LayerNorm).
    (N, C_in, *S) -> (N, *(S / patch), dim)."""

    def __init__(self, spatial_dims: int, in_channels: int, dim: int, patch_size: int, norm: bool = True) -> None:
        super().__init__()
        self.proj = layers.conv(spatial_dims)(in_channels, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_channels_last(self.proj(x)))


def _pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Channels-last N-D pixel shuffle: (B, *S, scale**d * C) -> (B, *(S * scale), C)."""
    b, *size, c = x.shape
    d = len(size)
    out_c = c // scale**d
    x = x.reshape(b, *size, *([scale] * d), out_c)
    order = [0, *itertools.chain.from_iterable((1 + i, 1 + d + i) for i in range(d)), 2 * d + 1]
    return x.permute(order).reshape(b, *(s * scale for s in size), out_c)


class PatchMerging(nn.Module):
    """Swin down-sampling: concatenate each 2x2(x2) neighbourhood, LayerNorm, Linear to
    `out_dim` (default 2 * dim). (B, *S, dim) -> (B, *ceil(S / 2), out_dim).

    The neighbours are concatenated with the first spatial axis's offset varying fastest, as
    the official Swin code ([x0, x1, x2, x3] = offsets (0,0), (1,0), (0,1), (1,1) in (h, w)),
    so its published weights apply unchanged."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.norm = nn.LayerNorm(2**spatial_dims * dim)
        self.reduction = nn.Linear(2**spatial_dims * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *size, c = x.shape
        pads = [0, 0]
        for s in reversed(size):
            pads += [0, s % 2]
        if any(pads):
            x = F.pad(x, pads)
        d = self.spatial_dims
        half = [(s + 1) // 2 for s in size]
        shape = [b]
        for h in half:
            shape += [h, 2]
        x = x.reshape(*shape, c)
        order = [0, *(1 + 2 * i for i in range(d)), *(2 + 2 * i for i in reversed(range(d))), 2 * d + 1]
        x = x.permute(order).reshape(b, *half, 2**d * c)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Swin-UNet up-sampling (Cao et al. 2021): Linear to scale**d * out_dim, rearrange into a
    `scale`-times larger map, LayerNorm. (B, *S, dim) -> (B, *(S * scale), out_dim)."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale**spatial_dims * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle(self.expand(x), self.scale))

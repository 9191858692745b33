"""The LDM convolutional decoder: latent (B, z_channels, h, w) -> image (B, out_ch, h·2^L, w·2^L).

Source: svg_reference.md §2.7 (LDM ``Decoder``, Rombach et al. 2022). Key names equal the reference's:
``conv_in``, ``mid.{block_1, attn_1, block_2}``, ``up.{i}.block.{j}``, ``up.{i}.attn.{j}``, ``up.{i}.upsample.conv``,
``norm_out``, ``conv_out``. No tanh: the output is meant to lie in [-1, 1] and callers clamp at inference.
Generic in ``ch``/``ch_mult`` so the tiny and demo presets reuse it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from svg.config import DecoderConfig

__all__ = ["Decoder"]


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups, eps 1e-6, affine: the LDM "Normalize".
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN–SiLU–conv3×3 twice with a residual; 1×1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1-conv q, k, v and ``proj_out``, scale C^-0.5."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, c, h * w).transpose(2, 3)  # (B, 1, HW, C)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """LDM decoder.

    ``forward(z (B, z_channels, h, w) float) -> (B, out_ch, h·2^(L−1), w·2^(L−1))`` with L = len(ch_mult);
    16× for the released config (392 × 16 × 16 -> 3 × 256 × 256). Output is unclamped.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        levels = len(config.ch_mult)
        block_in = config.ch * config.ch_mult[-1]
        res = config.latent_size
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, config.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, config.dropout)
        up_levels: list[nn.Module] = []
        for level in reversed(range(levels)):  # lowest resolution first
            block_out = config.ch * config.ch_mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, config.dropout))
                block_in = block_out
                if res in config.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            up_levels.insert(0, stage)  # index = level, as in the reference's key names
        self.up = nn.ModuleList(up_levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

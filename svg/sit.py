"""The SVG diffusion transformer: a DiT/SiT with a linear token projection and per-head QK-LayerNorm.

Source: svg_reference.md §4 (reference ``models/models_SVG.py``, class ``DiT``) and DiT (Peebles & Xie 2023).
Parameter names equal the reference's, so the released ``.pt`` state dict loads strictly:
``ln1``, ``pos_embed``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``,
``blocks.i.{attn.qkv, attn.q_norm, attn.k_norm, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}``,
``final_layer.{linear, adaLN_modulation.1}``.

Time convention: t = 0 is noise, t = 1 is data, fed raw in [0, 1] (not ×1000). Label ``num_classes`` is the null
class. The forward has no ``.item()`` and no branch on tensor values, so ``torch.compile(fullgraph=True)`` and CUDA
graphs can capture it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from svg.attention import AttentionBackend, attention, resolve_backend, sdpa_attention
from svg.config import SiTConfig

__all__ = ["SiT", "sincos_pos_embed_2d", "timestep_embedding"]


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE/DiT layout), float32 (grid², dim).

    Token index = row·grid + col. The first dim/2 channels encode the column as [sin(col·ω), cos(col·ω)], the
    last dim/2 encode the row likewise, with ω_k = 10000^(−k/(dim/4)), k = 0..dim/4−1 (svg_reference.md §4).
    Computed in float64 and rounded once, as the reference (numpy) does.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim={dim} is invalid; allowed: a multiple of 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(pos, pos, indexing="ij")  # (grid, grid) each

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega.reshape(1, -1)  # (grid², dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(col), encode(row)], dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """DiT sinusoidal time features, cos first: [cos(t·f_k), sin(t·f_k)], f_k = max_period^(−k/(dim/2)).

    Args:
        t: (B,) float, the raw time in [0, 1] (SVG feeds it unscaled).
    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, T, H); shift/scale (B, H)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    # LayerNorm (no affine) then modulate: x (B, T, H); shift/scale (B, H). The reference's norm + modulate.
    return _modulate(F.layer_norm(x, (x.shape[-1],), eps=eps), shift, scale)


def _gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + gate.unsqueeze(1) * y  # x, y (B, T, H); gate (B, H)


@dataclass(frozen=True)
class SiTOps:
    """The SiT's swappable ops, chosen once (by the engine, ``select_ops``) and passed down to every block.

    ``attention(q, k, v, q_norm, k_norm)`` as :func:`svg.attention.attention`; ``modulate(x, shift, scale, eps)``
    = LayerNorm(x, no affine) · (1 + scale) + shift; ``gated_residual(x, gate, y)`` = x + gate · y.
    """

    name: str
    attention: Callable
    modulate: Callable
    gated_residual: Callable


TORCH_OPS = SiTOps("torch", sdpa_attention, _adaln_modulate, _gated_residual)  # the PyTorch reference of each op


def triton_ops() -> SiTOps:
    """The fused Triton kernels (kernels/), each checked against the reference ops above in tests/kernels."""
    import kernels

    return SiTOps("triton", kernels.flash_attention, kernels.adaln_modulate, kernels.gated_residual)


def select_ops(device: torch.device | str) -> SiTOps:
    """The ops the attention switch (``SVG_ATTENTION`` / ``set_attention_backend``) gives on ``device`` now:
    Triton kernels when it resolves to ``triton`` (``auto``: only after ``validate_triton_attention`` passed on
    that GPU), xformers attention with the reference adaLN ops, else :data:`TORCH_OPS`."""
    backend = resolve_backend(torch.empty(0, device=device))
    if backend is AttentionBackend.TRITON:
        return triton_ops()
    if backend is AttentionBackend.XFORMERS:
        return SiTOps("xformers", attention, _adaln_modulate, _gated_residual)
    return TORCH_OPS


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, hidden): sinusoid(256) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class LabelEmbedder(nn.Module):
    """y (B,) int64 in [0, num_classes] -> (B, hidden); row ``num_classes`` is the null class.

    In train mode each label is replaced by the null class with probability ``dropout_prob`` (classifier-free
    guidance training); ``force_drop_ids`` (B,) with 1 = drop does so explicitly in any mode.
    """

    def __init__(self, num_classes: int, hidden: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor, force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids == 1, torch.full_like(y, self.num_classes), y)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm(head_dim, eps 1e-5) on q and k."""

    def __init__(self, hidden: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-5) if qk_norm else None
        self.proj = nn.Linear(hidden, hidden)

    @staticmethod
    def _params(norm: Optional[nn.LayerNorm]):
        return None if norm is None else (norm.weight, norm.bias, norm.eps)

    def forward(self, x: torch.Tensor, attention_fn: Callable = attention) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, T, head_dim) each
        out = attention_fn(q, k, v, q_norm=self._params(self.q_norm), k_norm=self._params(self.k_norm))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (timm ``Mlp`` layout of the reference)."""

    def __init__(self, hidden: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block; modulation chunks (shift, scale, gate) for attention then MLP."""

    def __init__(self, config: SiTConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, config.num_heads, config.qk_norm)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(h, int(h * config.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ops: SiTOps = TORCH_OPS) -> torch.Tensor:
        # c may carry more rows than x (the SiT's fixed-size conditioning path): the first B are x's.
        mods = self.adaLN_modulation(c)[: x.shape[0]]  # (B, 6·hidden)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods.chunk(6, dim=1)
        x = ops.gated_residual(x, gate_a, self.attn(ops.modulate(x, shift_a, scale_a, self.norm1.eps), ops.attention))
        return ops.gated_residual(x, gate_m, self.mlp(ops.modulate(x, shift_m, scale_m, self.norm2.eps)))


class FinalLayer(nn.Module):
    """Non-affine LN modulated by (shift, scale), then Linear(hidden, out_channels)."""

    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[: x.shape[0]].chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """The SVG diffusion transformer (reference ``DiT``, svg_reference.md §4 and Appendix A).

    Example:
        >>> model = SiT(SIT_PRESETS["tiny"]).eval()
        >>> out = model(torch.randn(2, 64, 36), torch.rand(2), torch.tensor([3, 1000]))  # (2, 64, 72)

    Args:
        config: the :class:`SiTConfig`; ``config.out_channels`` outputs per token.

    Attributes:
        cond_rows: ``None``, or a fixed row count P for the conditioning path: the time/label embedders and every
            adaLN linear then run on P rows (the inputs padded with t = 0, the null label) whatever the batch size
            B <= P. Those GEMMs have M = rows, and CPU/GPU BLAS round a row differently at different M; the token
            GEMMs (M = B·T) do not on the CPUs we test (tests/svg/test_batch_invariance.py). With it, a row's output
            is bit-identical at any B <= P and any position in the batch, for the cost of P conditioning rows
            (weight-bound: about the cost of one). Engines set it to their ``max_rows``.
        ops: the :class:`SiTOps` every block uses, fixed by the engine at build time (``select_ops``); ``None``
            (a bare model) follows the process-wide attention switch at each call.
    """

    def __init__(self, config: SiTConfig) -> None:
        super().__init__()
        self.config = config
        self.cond_rows: int | None = None
        self.ops: SiTOps | None = None
        h = config.hidden_size
        self.ln1 = nn.Linear(config.in_channels, h)  # named like a norm in the reference, but a Linear
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, h), requires_grad=False)
        self.t_embedder = TimestepEmbedder(h)
        self.y_embedder = LabelEmbedder(config.num_classes, h, config.class_dropout_prob)
        self.blocks = nn.ModuleList(SiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(h, config.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT-standard init: xavier-uniform Linears with zero bias; N(0, 0.02) label table and time MLP;
        adaLN modulations and the final Linear zero (adaLN-Zero); fixed sin-cos ``pos_embed``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.config.hidden_size, self.config.input_size)[None])
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        force_drop_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the velocity (data − noise) of normalised latent tokens.

        Args:
            x: (B, T, C_in) float, normalised latent tokens, T = input_size², row-major.
            t: (B,) float time in [0, 1], 0 = noise, 1 = data.
            y: (B,) int64 class labels in [0, num_classes]; num_classes = null (unconditional).
            force_drop_ids: optional (B,) int, 1 = replace the label by the null class.

        Returns:
            (B, T, C_out) in x's dtype; C_out = 2·C_in when ``learn_sigma`` (velocity = first C_in channels).
        """
        h = self.ln1(x) + self.pos_embed  # (B, T, hidden)
        pad = 0 if self.cond_rows is None else max(0, self.cond_rows - x.shape[0])
        if pad:  # fixed-size conditioning path (see cond_rows); padded rows are sliced away in every block
            t = torch.cat([t, t.new_zeros(pad)])
            y = torch.cat([y, y.new_full((pad,), self.config.num_classes)])
            if force_drop_ids is not None:
                force_drop_ids = torch.cat([force_drop_ids, force_drop_ids.new_zeros(pad)])
        c = self.t_embedder(t) + self.y_embedder(y, force_drop_ids)  # (max(B, cond_rows), hidden)
        ops = self.ops if self.ops is not None else select_ops(x.device)
        for block in self.blocks:
            h = block(h, c, ops)
        return self.final_layer(h, c)  # (B, T, C_out)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first ``in_channels`` outputs of :meth:`forward`: (B, T, C_in)."""
        return self.forward(x, t, y)[..., : self.config.in_channels]

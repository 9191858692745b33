"""Quality checks of an engine against eager float32: the velocity's max abs difference, sample drift.

Every speed number of the ladder (engines/bench.py) carries one of these beside it (style principle 7).
"""

from __future__ import annotations

import torch
from torch import nn


def sit_probe_inputs(config, rows: int, seed: int, device: torch.device | str = "cpu"):
    """Deterministic probe inputs: ``x (rows, T, C) ~ N(0, 1)``, ``t (rows,)`` spread over [0, 1),
    ``y (rows,)`` cycling through the classes and the null label."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, config.num_tokens, config.in_channels, generator=gen)
    t = torch.arange(rows, dtype=torch.float32) / rows
    y = torch.arange(rows, dtype=torch.int64) % (config.num_classes + 1)
    return x.to(device), t.to(device), y.to(device)


@torch.no_grad()
def velocity_max_abs_diff(engine, reference: nn.Module, *, rows: int = 4, seed: int = 0) -> float:
    """Max |engine(x, t, y) − reference(x, t, y)| over the velocity channels, reference in float32 on its device.

    Args:
        engine: any engine (or callable with ``SiT.forward``'s signature).
        reference: an fp32 ``svg.sit.SiT`` with the same weights (not the engine's own module, which a half
            precision engine has cast in place).
        rows: probe rows (must fit the engine's ``max_rows``).
        seed: probe seed.

    Returns:
        The max abs difference (float, in velocity units).
    """
    config = reference.config
    device = next(reference.parameters()).device
    x, t, y = sit_probe_inputs(config, rows, seed, device)
    ref = reference(x, t, y)[..., : config.in_channels].float()
    out = engine(x, t, y)[..., : config.in_channels].float().to(device)
    return (out - ref).abs().max().item()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a − b| in float32 on ``a``'s device (0.0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return (a.float() - b.float().to(a.device)).abs().max().item()

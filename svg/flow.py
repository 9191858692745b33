"""Flow-matching training loss, in the reference convention (svg_reference.md §5 and §8).

t = 0 is noise and t = 1 is data: ``z_t = (1 − t)·z0 + t·x`` with ``z0 ~ N(0, I)``, the target velocity is
``x − z0`` and t is drawn uniformly and then shifted (training shift s = 0.4). The loss is the plain mean squared
error over all tokens and the first C output channels (the learned-sigma half gets no gradient), averaged over the
batch, with no weighting. Shared by training and the parity runner.
"""

from __future__ import annotations

from typing import Callable

import torch

from svg.sampling import shift_time

__all__ = ["TRAIN_SHIFT", "flow_matching_loss"]

TRAIN_SHIFT = 0.4  # the released model's training shift (svg_reference.md §8)


def flow_matching_loss(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    shift: float = TRAIN_SHIFT,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Velocity-matching loss of the reference ``RectifiedFlow.forward``.

    Args:
        model: ``(x (B, T, C), t (B,), y (B,)) -> (B, T, C_out)`` with C_out >= C (e.g. ``svg.sit.SiT``); label
            dropout, if any, is the model's business (train mode).
        x: (B, T, C) float data latents (normalised tokens).
        y: (B,) int64 class labels.
        noise: optional (B, T, C) noise z0; drawn from ``generator`` when None.
        u: optional (B,) uniform draws in [0, 1] before the shift; drawn from ``generator`` when None.
        shift: timestep shift s applied to u in ``x``'s dtype (<= 0: none).
        generator: random source for the draws that are not given (on ``x``'s device).

    Returns:
        ``(loss, mse, t)``: the scalar batch mean, the (B,) per-sample mean squared error and the (B,) shifted t fed
        to the model.

    Raises:
        ValueError: mismatched shapes (the message names the argument).
    """
    if x.dim() != 3:
        raise ValueError(f"x.shape={tuple(x.shape)} is invalid; allowed: (B, T, C)")
    batch = x.shape[0]
    if y.shape != (batch,):
        raise ValueError(f"y.shape={tuple(y.shape)} is invalid; allowed: ({batch},)")
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    elif noise.shape != x.shape:
        raise ValueError(f"noise.shape={tuple(noise.shape)} is invalid; allowed: {tuple(x.shape)} (as x)")
    if u is None:
        u = torch.rand(batch, generator=generator, device=x.device, dtype=x.dtype)
    elif u.shape != (batch,):
        raise ValueError(f"u.shape={tuple(u.shape)} is invalid; allowed: ({batch},)")
    t = shift_time(u.to(x.dtype), shift)  # (B,)
    tb = t.view(batch, 1, 1)
    z_t = (1 - tb) * noise + tb * x  # (B, T, C), t = 0 noise, t = 1 data
    target = x - noise  # velocity, data − noise
    v = model(z_t, t, y)[..., : x.shape[-1]]
    mse = (v.float() - target.float()).pow(2).mean(dim=(1, 2))  # (B,)
    return mse.mean(), mse, t

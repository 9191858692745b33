"""Small builders shared by the training tests."""

from __future__ import annotations

import torch

from svg.config import SiTConfig
from training.stage2 import Stage2Config, Stage2Trainer

# a SiT small enough that a training step takes milliseconds
MICRO_SIT = SiTConfig(input_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, num_classes=10)


def micro_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, MICRO_SIT.num_tokens, MICRO_SIT.in_channels, generator=g), torch.randint(0, 10, (n,),
                                                                                                      generator=g)


def batch_fn(data, batch_size: int, trainer: Stage2Trainer):
    """Deterministic batches keyed on (optimizer step, micro index), so resumed runs see the same data."""
    x, y = data

    def f(i: int):
        k = (trainer.step_count * trainer.cfg.accum + i) * batch_size % x.shape[0]
        return x[k : k + batch_size], y[k : k + batch_size]

    return f


def make_trainer(**overrides) -> Stage2Trainer:
    cfg = Stage2Config(**{"steps": 6, "batch_size": 8, "lr": 1e-2, "seed": 3, **overrides})
    return Stage2Trainer(MICRO_SIT, cfg)

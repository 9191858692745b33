"""Batch invariance as a property of the model and the step (issue 10): a row's result depends only on its own
inputs, never on how many rows share the forward or where it sits, with the SiT's fixed-size conditioning path."""

from __future__ import annotations

import pytest
import torch

from svg.config import SiTConfig
from svg.sampling import Guidance, GuidanceMode, RowPlan, Solver, initial_noise, run_rows, time_grid
from svg.sit import SiT

T, C = 16, 24


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SiT(SiTConfig(input_size=4, in_channels=C, hidden_size=64, depth=2, num_heads=2, num_classes=10)).eval()
    with torch.no_grad():  # adaLN-Zero would make every output 0
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


def test_conditioning_path_is_where_rows_differ_and_cond_rows_fixes_it(model):
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(32, T, C, generator=g), torch.rand(32, generator=g), torch.randint(0, 10, (32,), generator=g)
    with torch.no_grad():
        model.cond_rows = 32
        try:
            full = model(x, t, y)
            for n in (1, 2, 3, 7, 16, 32):
                for k in (0, 32 - n):  # first and last positions
                    assert torch.equal(model(x[k:k + n], t[k:k + n], y[k:k + n]), full[k:k + n]), (n, k)
        finally:
            model.cond_rows = None
        plain = model(x, t, y)
        assert torch.allclose(plain, full, atol=1e-5)  # the same maths; only the rounding of M = rows GEMMs moves


def test_a_request_alone_equals_the_same_request_among_seven_others_in_other_slots(model):
    grid = time_grid(4, 0.15)
    target = RowPlan(initial_noise(5, 0, (T, C)), 3, grid, Guidance(GuidanceMode.CONSTANT, 4.0), num_classes=10)
    others = [RowPlan(initial_noise(i, 1, (T, C)), i % 10, time_grid(2 + i, 0.3 * i),
                      Guidance(GuidanceMode.LATE, 2.0) if i % 2 else Guidance(), Solver.HEUN if i % 3 else "euler",
                      num_classes=10)
              for i in range(7)]
    model.cond_rows = 16
    try:
        alone = run_rows(model, [target]).latents[0]
        mixed = run_rows(model, others[:4] + [target] + others[4:]).latents[4]
    finally:
        model.cond_rows = None
    assert torch.equal(alone, mixed)

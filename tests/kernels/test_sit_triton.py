"""The SiT (tiny preset) with the Triton back-end (attention + fused adaLN glue), on the interpreter, matches SDPA."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from svg import attention as svg_attention
from svg.config import SIT_PRESETS
from svg.sit import SiT


class _OpLog(TorchDispatchMode):
    """Records the name of every op dispatched (our custom ops appear as ``svg_kernels.<op>.default``)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def restore_backend():
    before = svg_attention.get_attention_backend()
    yield
    svg_attention.set_attention_backend(before)


def test_tiny_sit_triton_backend_matches_sdpa(device, restore_backend):
    config = SIT_PRESETS["tiny"]
    torch.manual_seed(0)
    model = SiT(config).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised adaLN / final layer would hide the attention output
            p.normal_(0.0, 0.2)
    tokens = config.input_size ** 2
    x = torch.randn(2, tokens, config.in_channels, device=device)
    t = torch.tensor([0.3, 0.9], device=device)
    y = torch.tensor([1, config.num_classes], device=device)  # one conditional row, one null-class row

    with torch.no_grad():
        svg_attention.set_attention_backend("sdpa")
        expected = model(x, t, y)
        svg_attention.set_attention_backend("triton")
        assert kernels.backend_name(device) != "reference"
        with _OpLog() as ops:
            actual = model(x, t, y)

    assert expected.abs().max().item() > 1e-2  # the comparison is not between two zero tensors
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # one switch: attention, adaLN modulation and the gated residual all ran as custom kernels
    assert {"svg_kernels.flash_attention.default", "svg_kernels.adaln_modulate.default",
            "svg_kernels.gated_residual.default"} <= ops.names

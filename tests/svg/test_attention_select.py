"""`auto` attention: SDPA unless the Triton kernel passed its self-check on this GPU (case B05)."""

import pytest
import torch

from svg import attention as A


def test_auto_is_sdpa_on_cpu_and_validation_is_a_no_op_there():
    assert A.validate_triton_attention("cpu", num_heads=2, head_dim=72, tokens=17) is False
    x = torch.zeros(1, 2, 3, 8)
    assert A.resolve_backend(x) in (A.AttentionBackend.SDPA,) or A.get_attention_backend() is not A.AttentionBackend.AUTO


@pytest.mark.gpu
def test_triton_attention_validates_for_svg_xl_head_dim_on_gpu():
    assert A.validate_triton_attention("cuda", num_heads=16, head_dim=72, tokens=256) is True
    q = torch.zeros(1, 16, 256, 72, device="cuda", dtype=torch.bfloat16)
    if A.get_attention_backend() is A.AttentionBackend.AUTO:
        assert A.resolve_backend(q) is A.AttentionBackend.TRITON

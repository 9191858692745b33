"""`auto` attention: SDPA unless the Triton kernel passed its self-check on this GPU (case B05: a Triton kernel that
disagrees with SDPA must never be picked silently).

The backend is a process-wide switch, so every test here sets the one it checks and restores the previous one:
nothing depends on what an earlier test (or SVG_ATTENTION) left selected.
"""

import pytest
import torch

from svg import attention as A


@pytest.fixture
def backend():
    """Set the process-wide attention backend for one test, then restore whatever was selected before."""
    previous = A.get_attention_backend()
    yield A.set_attention_backend
    A.set_attention_backend(previous)


def test_auto_is_sdpa_on_cpu_and_validation_is_a_no_op_there(backend):
    backend("auto")
    assert A.get_attention_backend() is A.AttentionBackend.AUTO
    assert A.validate_triton_attention("cpu", num_heads=2, head_dim=72, tokens=17) is False
    assert A.resolve_backend(torch.zeros(1, 2, 3, 8)) is A.AttentionBackend.SDPA


def test_an_explicit_backend_is_what_resolves(backend):
    # The switch really switches: "sdpa" resolves to sdpa, and "auto" on CPU also to sdpa, whatever ran before.
    backend("sdpa")
    assert A.resolve_backend(torch.zeros(1, 2, 3, 8)) is A.AttentionBackend.SDPA
    backend("triton")
    assert A.resolve_backend(torch.zeros(1, 2, 3, 8)) is A.AttentionBackend.TRITON
    backend("auto")
    assert A.resolve_backend(torch.zeros(1, 2, 3, 8)) is A.AttentionBackend.SDPA


@pytest.mark.gpu
def test_triton_attention_validates_for_svg_xl_head_dim_on_gpu(backend):
    backend("auto")
    assert A.validate_triton_attention("cuda", num_heads=16, head_dim=72, tokens=256) is True
    q = torch.zeros(1, 16, 256, 72, device="cuda", dtype=torch.bfloat16)
    assert A.resolve_backend(q) is A.AttentionBackend.TRITON

"""Compiled engine (CPU inductor): no input layout recompiles after warm-up (B30, second form).

The server's decode path hands the decoder a transposed view of the token tensor (``svg.latent.to_latent``); with a
full decode batch (no padding) that view reached the compiled graph as is, failed dynamo's stride guard and
recompiled after /ready. Every call must present the layout warm-up used, whatever the caller passes: transposed
views, strided or offset slices of a bigger batch, exact bucket sizes and sizes that need padding.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

import engines
from engines.base import EagerEngine, EngineError
from svg.config import SIT_PRESETS, DecoderConfig
from svg.decoder import Decoder
from svg.latent import to_latent
from tests.engines.conftest import BUCKETS, randomize, sit_inputs

TOL = 1e-4  # compiled vs eager, fp32 (as in test_compiled.py)
DECODER_BUCKETS = (2, 4)


def _no_recompiles(engine, calls):
    """Run ``calls`` (``[(args, reference)]``) with recompiles made fatal; return the largest deviation."""
    before = dict(torch._dynamo.utils.counters["stats"])
    worst = 0.0
    with torch._dynamo.config.patch(error_on_recompile=True):
        for args, ref in calls:
            out = engine(*args)
            assert out.shape == ref.shape and out.dtype == torch.float32
            worst = max(worst, (out - ref).abs().max().item())
    assert dict(torch._dynamo.utils.counters["stats"]) == before
    return worst


def _sit_layouts(rows: int, seed: int):
    """The same (x, t, y) values in contiguous form and in three non-contiguous / offset layouts."""
    x, t, y = sit_inputs(rows, seed=seed)
    config = SIT_PRESETS["tiny"]
    transposed = x.transpose(1, 2).contiguous().transpose(1, 2)  # (rows, T, C) with strides (T*C, 1, T)
    assert not transposed.is_contiguous()
    big_t, big_y = torch.zeros(2 * rows + 1), torch.zeros(2 * rows + 1, dtype=torch.int64)
    big_t[1::2], big_y[1::2] = t, y  # every other row of a bigger batch: stride 2, offset 1
    big_x = torch.zeros(rows + 3, config.num_tokens, config.in_channels)
    big_x[3:] = x  # a contiguous slice at a non-zero storage offset
    return (x, t, y), [
        (transposed, big_t[1::2], big_y[1::2]),
        (big_x[3:], t.double(), y.int()),  # dtypes the sampler could pass: cast to the warm-up dtypes
        (x.permute(2, 0, 1).contiguous().permute(1, 2, 0), t.expand(1, rows)[0], y.flip(0).flip(0)),
    ]


def test_sit_any_input_layout_runs_the_warm_graph(tiny_sit, compiled_sit):
    # torch._dynamo.explain (test_compiled.py) resets dynamo's caches: warm up again, as the server does once.
    compiled_sit.warmup(BUCKETS, example=sit_inputs(1, seed=0))
    eager = EagerEngine(tiny_sit, device="cpu")
    calls = []
    for rows in (1, 2, 3, 4):  # 1, 2, 4: exact buckets (no padding); 3 pads to 4
        plain, layouts = _sit_layouts(rows, seed=10 + rows)
        ref = eager(*plain)
        calls += [(args, ref) for args in layouts]
    assert _no_recompiles(compiled_sit, calls) < TOL


@pytest.fixture(scope="module")
def tiny_decoder():
    # The two-level decoder of test_create.py: a short CPU compile, same graph kinds (conv, attention, upsample).
    config = DecoderConfig(z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(8,),
                           resolution=16)
    torch.manual_seed(0)
    return randomize(Decoder(config), std=0.1).eval()


def test_decoder_transposed_latent_at_full_bucket_runs_the_warm_graph(tiny_decoder):
    compiled = engines.create("compile", copy.deepcopy(tiny_decoder), role="decoder", device="cpu",
                              buckets=DECODER_BUCKETS)
    assert set(compiled.bucket_seconds) == set(DECODER_BUCKETS)
    gen = torch.Generator().manual_seed(1)
    calls = []
    for rows in (2, 3, 4):  # 2, 4: a full decode batch, no padding (the reviewer's failing case); 3 pads to 4
        tokens = torch.randn(rows, 64, 8, generator=gen)  # (R, T, C) as the sampler leaves them
        latent = to_latent(tokens, 8, 8)  # (R, C, h, w) transposed view, as server/model.py decode_tokens makes
        assert not latent.is_contiguous()
        with torch.no_grad():
            ref = tiny_decoder(latent.contiguous()).clamp(-1, 1)
        big = torch.zeros(rows + 2, 8, 8, 8)
        big[2:] = latent
        calls += [((latent,), ref), ((big[2:],), ref), ((latent.contiguous(memory_format=torch.channels_last),), ref)]
    assert _no_recompiles(compiled, calls) < TOL


def test_mismatched_input_after_warmup_is_an_engine_error(compiled_sit):
    x, t, y = sit_inputs(2, seed=0)
    with pytest.raises(EngineError, match=r"argument 0 has shape \(2, 64, 37\).*\(R, 64, 36\)"):
        compiled_sit(torch.zeros(2, 64, 37), t, y)
    with pytest.raises(EngineError, match="argument 2 has dtype torch.float32.*torch.int64"):
        compiled_sit(x, t, y.float())
    with pytest.raises(EngineError, match="warmed up with 3 arguments; got 2"):
        compiled_sit(x, t)

"""engines.create, the eager engine, precision policy, per-row non-finite detection, the TensorRT engine's
start-up error, profile limit (B31) and cache key."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

import engines
from engines.base import DecoderEngine, EagerEngine, EngineError, nonfinite_rows
from engines.buckets import bucket_for, default_buckets, validate_buckets
from engines.cache import cache_key, weights_hash
from engines.precision import prepare_module
from engines.tensorrt import TensorRTEngine
from svg.config import AE_PRESETS, DecoderConfig
from svg.decoder import Decoder
from tests.engines.conftest import randomize, sit_inputs

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_create_eager_matches_module(tiny_sit):
    engine = engines.create("eager", copy.deepcopy(tiny_sit), device="cpu", max_rows=4)
    assert isinstance(engine, EagerEngine) and engine.dtype == torch.float32
    x, t, y = sit_inputs(3, seed=5)
    assert engine.module.cond_rows == 4  # batch-invariant by default: a fixed-size conditioning path
    same = copy.deepcopy(tiny_sit)
    same.cond_rows = 4
    with torch.no_grad():
        assert torch.equal(engine(x, t, y), same(x, t, y))
        assert torch.allclose(engine(x, t, y), tiny_sit(x, t, y), atol=1e-5)  # the same maths, other rounding
    with pytest.raises(EngineError, match="max_rows=4"):
        engine(*sit_inputs(5, seed=0))


def test_create_rejects_unknown_kind_and_role(tiny_sit):
    with pytest.raises(ValueError, match="kind='onnx'.*eager.*compile.*tensorrt"):
        engines.create("onnx", tiny_sit, device="cpu")
    with pytest.raises(ValueError, match="role='vae'"):
        engines.create("eager", tiny_sit, role="vae", device="cpu")
    with pytest.raises(ValueError, match="dtype='int8'"):
        engines.create("eager", tiny_sit, device="cpu", dtype="int8")


def test_mismatched_rows_rejected(tiny_sit):
    engine = EagerEngine(tiny_sit, device="cpu")
    x, t, y = sit_inputs(3, seed=0)
    with pytest.raises(EngineError, match="argument 1 has 2 rows but argument 0 has 3"):
        engine(x, t[:2], y)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; the not-installed message cannot be checked")
def test_tensorrt_not_installed_fails_at_startup(tiny_sit):
    with pytest.raises(EngineError, match="TensorRT Python package is not installed.*--engine compile or eager"):
        engines.create("tensorrt", tiny_sit, device="cpu", max_rows=4)


def test_tensorrt_profile_limit_is_an_engine_error_before_tensorrt(tiny_sit):
    # B31: max 8 images with guidance = 16 rows; 9 guided images = 18 rows -> a clear error naming the limit.
    engine = TensorRTEngine(copy.deepcopy(tiny_sit), device="cpu", max_rows=16)
    assert engine.padded_rows(16) == 16
    with pytest.raises(EngineError, match="rows=18 exceeds this engine's max_rows=16"):
        engine(*sit_inputs(18, seed=0))
    with pytest.raises(ValueError, match="opt_rows=32"):
        TensorRTEngine(tiny_sit, device="cpu", max_rows=16, opt_rows=32)
    with pytest.raises(ValueError, match="latent_shape"):
        TensorRTEngine(tiny_sit, role="decoder", device="cpu")


def test_cache_key_covers_every_field(tiny_sit):
    engine = TensorRTEngine(copy.deepcopy(tiny_sit), device="cpu", max_rows=16, preset="tiny")
    fields = engine.cache_fields("10.0.0")
    assert set(fields) >= {"preset", "weights", "dtype", "profile", "tensorrt", "torch", "gpu"}
    base = cache_key(fields)
    assert cache_key(dict(fields)) == base
    for name, other in [("preset", "demo"), ("dtype", "bfloat16"), ("profile", [1, 8, 8]), ("tensorrt", "10.1"),
                        ("torch", "2.11.0"), ("gpu", "sm80"), ("weights", "0" * 64)]:
        assert cache_key({**fields, name: other}) != base, name
    before = weights_hash(engine.module)
    with torch.no_grad():
        engine.module.final_layer.linear.bias[0] += 1e-3
    assert weights_hash(engine.module) != before
    with pytest.raises(TypeError, match="'gpu'"):
        cache_key({"gpu": object()})


def test_buckets():
    assert default_buckets(1) == [1]
    assert default_buckets(16) == [1, 2, 4, 8, 16]
    assert default_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert validate_buckets([4, 1, 2, 2]) == [1, 2, 4]
    assert [bucket_for(r, [1, 2, 4, 8]) for r in (1, 3, 5, 8)] == [1, 4, 8, 8]
    with pytest.raises(ValueError, match="got 0"):
        validate_buckets([0, 2])
    with pytest.raises(ValueError, match="rows=9"):
        bucket_for(9, [1, 2, 4, 8])


def test_bf16_policy_keeps_norms_fp32_and_output_fp32(tiny_sit):
    module = prepare_module(copy.deepcopy(tiny_sit), torch.device("cpu"), torch.bfloat16)
    norms = [m for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)  # QK-LayerNorm
    assert module.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    engine = EagerEngine(module, device="cpu", dtype=torch.bfloat16)
    x, t, y = sit_inputs(2, seed=7)
    out = engine(x, t, y)
    with torch.no_grad():
        ref = tiny_sit(x, t, y)
    assert out.dtype == torch.float32
    # bf16 has an 8-bit mantissa: relative error of a few 1e-3 per op; the velocity stays within 3 % of its range.
    assert (out - ref).abs().max() < 0.03 * ref.abs().max()


def test_nonfinite_rows():
    out = torch.zeros(4, 3, 2)
    out[1, 2, 0] = float("nan")
    out[3, 0, 1] = float("-inf")
    assert nonfinite_rows(out).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="row dimension"):
        nonfinite_rows(torch.tensor(1.0))


def test_decoder_engines_match_eager():
    # A two-level decoder (half the tiny preset's graph) keeps the CPU inductor compile short in CI.
    config = DecoderConfig(z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(8,),
                           resolution=16)
    torch.manual_seed(0)
    tiny_decoder = randomize(Decoder(config), std=0.1).eval()
    latent = torch.randn(3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_decoder(latent).clamp(-1, 1)
    eager = engines.create("eager", copy.deepcopy(tiny_decoder), role="decoder", device="cpu", max_rows=4)
    assert isinstance(eager, DecoderEngine)
    assert torch.equal(eager(latent), ref)
    compiled = engines.create("compile", copy.deepcopy(tiny_decoder), role="decoder", device="cpu", buckets=[4])
    assert set(compiled.bucket_seconds) == {4}  # one compile: keeps CI time down; 3 rows pad to 4
    out = compiled(latent)
    assert out.shape == (3, 3, 16, 16)
    assert (out - ref).abs().max().item() < 1e-4


def test_decoder_engine_on_autoencoder_leaves_encoders_alone():
    from svg.autoencoder import SVGAutoencoder

    torch.manual_seed(0)
    ae = SVGAutoencoder(AE_PRESETS["tiny"]).eval()
    latent = torch.randn(2, 36, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ae.decode(latent)
    assert torch.equal(engines.create("eager", ae, role="decoder", device="cpu", max_rows=2)(latent), ref)
    engines.create("eager", ae, role="decoder", device="cpu", dtype="bf16", max_rows=2)
    assert ae.decoder.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in ae.encoder.parameters())  # the encoders stay fp32 for editing

"""TensorRT plan cache (case T24: two models with the same structure but different weights, or engines from another
driver, shared a cached engine). Every input of the key is varied on CPU; a truncated plan is deleted and rebuilt with
a warning, never a crash. No TensorRT needed: the key and the load-or-build logic are plain Python."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from engines.base import EngineError
from engines.cache import cache_key, engine_cache_dir
from engines.tensorrt import TensorRTEngine, load_or_build_plan
from svg.config import SIT_PRESETS
from svg.sit import SiT

from .conftest import randomize

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "sm90", "driver": "550.54.15"}


def _key(module, *, gpu=H100, trt="10.9.0", **engine_kwargs) -> str:
    engine = TensorRTEngine(module, device="cpu", **engine_kwargs)
    return cache_key(engine.cache_fields(trt, gpu=gpu))


def _sit(seed: int = 0, **changes) -> SiT:
    torch.manual_seed(seed)
    return SiT(dataclasses.replace(SIT_PRESETS["tiny"], **changes))


def test_every_input_of_the_key_changes_it():
    base = _sit()
    key = _key(base)
    assert key == _key(base), "the key must be deterministic"
    variants = {
        "other weights": _key(_sit(seed=1)),
        "H200 (same sm90)": _key(base, gpu={**H100, "name": "NVIDIA H200"}),
        "driver 570": _key(base, gpu={**H100, "driver": "570.86.15"}),
        "capability": _key(base, gpu={**H100, "capability": "sm89"}),
        "TensorRT": _key(base, trt="10.10.0"),
        "precision": _key(base, dtype=torch.bfloat16),
        "profile": _key(base, max_rows=32),
        "profile opt": _key(base, max_rows=16, opt_rows=8),
    }
    same = [name for name, other in variants.items() if other == key]
    assert not same, f"these changes hit the old plan: {same}"
    assert len(set(variants.values())) == len(variants)


def test_same_weights_but_another_graph_is_another_key():
    """qk_norm=False leaves no parameter that depends on the head count: 2 and 4 heads have identical state dicts,
    yet export different graphs (different outputs). The full model config is in the key."""
    two, four = randomize(_sit(qk_norm=False, num_heads=2)), _sit(qk_norm=False, num_heads=4)
    four.load_state_dict(two.state_dict(), strict=True)
    x, t, y = torch.randn(1, 64, 36), torch.rand(1), torch.tensor([3])
    with torch.no_grad():
        assert not torch.allclose(two(x, t, y), four(x, t, y))
    assert _key(two) != _key(four)


def test_torch_version_is_in_the_key(monkeypatch):
    base = _sit()
    key = _key(base)
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert _key(base) != key


def test_engine_cache_dir_follows_svg_engine_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SVG_ENGINE_CACHE", str(tmp_path / "engines"))
    assert engine_cache_dir() == tmp_path / "engines"
    assert TensorRTEngine(_sit(), device="cpu").cache_dir == tmp_path / "engines"
    assert engine_cache_dir(tmp_path / "x") == tmp_path / "x"


class _FakeRuntime:
    """Deserializes only complete plans (``PLAN:`` + 64 bytes), like TensorRT returning None on a truncated one."""

    def __init__(self):
        self.builds = 0

    def deserialize(self, data: bytes):
        return ("engine", data) if data.startswith(b"PLAN:") and len(data) == 69 else None

    def build(self) -> bytes:
        self.builds += 1
        return b"PLAN:" + bytes(64)


def test_a_truncated_plan_is_deleted_and_rebuilt_with_a_warning(tmp_path, caplog):
    runtime = _FakeRuntime()
    path = tmp_path / "sit-tiny-abc.plan"
    engine, cached = load_or_build_plan(path, runtime.deserialize, runtime.build)
    assert engine is not None and not cached and runtime.builds == 1 and path.stat().st_size == 69
    engine, cached = load_or_build_plan(path, runtime.deserialize, runtime.build)
    assert cached and runtime.builds == 1  # a good plan is reused

    path.write_bytes(path.read_bytes()[:20])  # a crash or a full disk mid-copy
    with caplog.at_level(logging.WARNING, logger="svg.engines.tensorrt"):
        engine, cached = load_or_build_plan(path, runtime.deserialize, runtime.build)
    assert engine is not None and not cached and runtime.builds == 2
    assert path.stat().st_size == 69
    assert any("unusable" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


def test_an_unreadable_plan_is_rebuilt_and_a_broken_build_raises(tmp_path):
    runtime = _FakeRuntime()
    path = tmp_path / "p.plan"
    path.write_bytes(b"garbage")

    def raising(data: bytes):
        raise RuntimeError("TensorRT: serialization assertion failed")

    calls = []

    def deserialize(data: bytes):
        calls.append(data)
        return raising(data) if len(calls) == 1 else runtime.deserialize(data)

    engine, cached = load_or_build_plan(path, deserialize, runtime.build)
    assert engine is not None and not cached
    with pytest.raises(EngineError, match="just built"):
        load_or_build_plan(tmp_path / "q.plan", lambda data: None, runtime.build)

"""ONNX export of the SiT and the decoder: onnxruntime parity with eager at batch 1 and 3 (T21), opset pinned,
LayerNorms exported as LayerNormalization nodes with their eps preserved (T22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from engines.onnx_export import MIN_OPSET, OPSET, export_decoder, export_sit, layer_norm_epsilons, onnx_opset
from svg.config import AE_PRESETS
from svg.decoder import Decoder
from tests.engines.conftest import randomize, sit_inputs


@pytest.fixture(scope="module")
def sit_onnx(tiny_sit, tmp_path_factory):
    return export_sit(tiny_sit, tmp_path_factory.mktemp("onnx") / "sit.onnx", max_rows=8)


@pytest.fixture(scope="module")
def tiny_decoder():
    torch.manual_seed(0)
    return randomize(Decoder(AE_PRESETS["tiny"].decoder), std=0.1).eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("rows", [1, 3])
def test_sit_onnx_matches_eager(tiny_sit, sit_onnx, rows):
    x, t, y = sit_inputs(rows, seed=rows)
    y[0] = 1000  # the null class must be a valid input of the exported graph
    (out,) = _session(sit_onnx).run(None, {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})
    with torch.no_grad():
        ref = tiny_sit(x, t, y).numpy()
    assert out.shape == ref.shape == (rows, 64, 72)
    assert np.abs(ref).max() > 1e-3
    assert np.abs(out - ref).max() < 1e-4


def test_sit_onnx_opset_and_layernorm_nodes(tiny_sit, sit_onnx):
    assert OPSET >= MIN_OPSET == 17
    assert onnx_opset(sit_onnx) == OPSET
    norms = [m for m in tiny_sit.modules() if isinstance(m, nn.LayerNorm)]  # incl. per-head QK-LayerNorm
    epsilons = layer_norm_epsilons(sit_onnx)
    assert len(epsilons) == len(norms) == 9
    assert sorted(epsilons) == pytest.approx(sorted(m.eps for m in norms), rel=1e-6)
    assert min(epsilons) > 0


def test_export_rejects_old_opset(tiny_sit, tmp_path):
    with pytest.raises(ValueError, match="opset=16"):
        export_sit(tiny_sit, tmp_path / "old.onnx", max_rows=4, opset=16)


@pytest.mark.parametrize("rows", [1, 3])
def test_decoder_onnx_matches_eager(tiny_decoder, tmp_path_factory, rows):
    config = AE_PRESETS["tiny"].decoder
    shape = (config.z_channels, config.latent_size, config.latent_size)
    path = tmp_path_factory.getbasetemp() / "decoder.onnx"
    if not path.exists():
        export_decoder(tiny_decoder, path, latent_shape=shape, max_rows=4)
    latent = torch.randn(rows, *shape, generator=torch.Generator().manual_seed(rows))
    (out,) = _session(path).run(None, {"latent": latent.numpy()})
    with torch.no_grad():
        ref = tiny_decoder(latent).clamp(-1, 1).numpy()
    assert out.shape == ref.shape == (rows, 3, 32, 32)
    assert np.abs(out - ref).max() < 1e-4

"""ONNX export of the SiT step and of the decoder, the input of the TensorRT builder.

* Opset pinned to :data:`OPSET` (>= 17): from opset 17 on, LayerNorm is one ``LayerNormalization`` node with its
  epsilon as an attribute; below, it decomposes into ReduceMean/Pow/Sqrt, which overflows in a TensorRT fp16 engine
  (case T22), and SDPA does not export below opset 14 (case T21).
* The rows dimension (dim 0 of every input) is dynamic in ``[1, max_rows]``, so one file serves a TensorRT
  optimization profile; all other dimensions are static (tokens, channels, latent size).
* Attention is exported through ``F.scaled_dot_product_attention`` (the ``sdpa`` backend of ``svg.attention``);
  the Triton custom ops are a GPU runtime choice, not an exchange format.
* The model is exported in float32; the builder chooses the engine precision (LayerNorms pinned to fp32 there).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from engines.base import DecodeAdapter

OPSET = 18  # >= 17 for LayerNormalization (T22); 18 is the torch.export-based exporter's native opset.
MIN_OPSET = 17
SIT_INPUTS = ("x", "t", "y")
DECODER_INPUTS = ("latent",)


@contextlib.contextmanager
def _sdpa_attention():
    """Route ``svg.attention`` through SDPA during export, restoring the previous backend afterwards."""
    try:
        from svg import attention
    except ImportError:  # a module that does not use svg.attention exports as it is
        yield
        return
    previous = attention.get_attention_backend()
    attention.set_attention_backend("sdpa")
    try:
        yield
    finally:
        attention.set_attention_backend(previous)


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path,
            max_rows: int, opset: int) -> Path:
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset} is too old; LayerNormalization needs opset >= {MIN_OPSET}")
    if max_rows < 2:
        raise ValueError(f"max_rows={max_rows} must be >= 2 for a dynamic rows dimension")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = torch.export.Dim("rows", min=1, max=max_rows)
    dynamic_shapes = {name: {0: rows} for name in names}
    module = module.eval().float()
    with _sdpa_attention(), torch.no_grad():
        program = torch.onnx.export(
            module, example, dynamo=True, opset_version=opset, input_names=list(names), output_names=["out"],
            dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
        )
        program.save(str(path))
    return path


class _SiTStep(nn.Module):
    """``forward(x, t, y)`` of the SiT with positional arguments only (the exporter's input order)."""

    def __init__(self, sit: nn.Module) -> None:
        super().__init__()
        self.sit = sit

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sit(x, t, y)


def export_sit(sit: nn.Module, path: str | Path, *, max_rows: int, opset: int = OPSET) -> Path:
    """Export one SiT evaluation ``(x (R,T,C) f32, t (R,) f32, y (R,) int64) -> out (R,T,C_out) f32`` to ONNX.

    Args:
        sit: ``svg.sit.SiT`` (needs ``sit.config`` for the token/channel sizes); exported in float32.
        path: destination ``.onnx`` file (weights embedded).
        max_rows: upper bound of the dynamic rows dimension (the TensorRT profile's max).
        opset: ONNX opset, >= :data:`MIN_OPSET`.

    Returns:
        ``path``.

    Raises:
        ValueError: ``opset`` < 17 or ``max_rows`` < 2.
    """
    config = sit.config
    example = (
        torch.randn(2, config.num_tokens, config.in_channels),
        torch.rand(2),
        torch.tensor([0, config.num_classes], dtype=torch.int64),
    )
    device = next(sit.parameters()).device
    example = tuple(e.to(device) for e in example)
    return _export(_SiTStep(sit), example, SIT_INPUTS, Path(path), max_rows, opset)


def export_decoder(decoder: nn.Module, path: str | Path, *, latent_shape: tuple[int, int, int], max_rows: int,
                   clamp: bool = True, opset: int = OPSET) -> Path:
    """Export the decoder ``latent (R, C, h, w) f32 -> images (R, 3, H, W) f32`` to ONNX.

    Args:
        decoder: ``SVGAutoencoder`` (its ``decode``) or a bare ``svg.decoder.Decoder``.
        path: destination ``.onnx`` file.
        latent_shape: ``(C, h, w)`` of one latent, e.g. ``(392, 16, 16)`` for the released model.
        max_rows: upper bound of the dynamic rows dimension.
        clamp: clamp images to [-1, 1] inside the graph (reference output path).
        opset: ONNX opset, >= :data:`MIN_OPSET`.

    Raises:
        ValueError: ``opset`` < 17 or ``max_rows`` < 2.
    """
    device = next(decoder.parameters()).device
    example = (torch.randn(2, *latent_shape, device=device),)
    return _export(DecodeAdapter(decoder, clamp), example, DECODER_INPUTS, Path(path), max_rows, opset)


def layer_norm_epsilons(onnx_path: str | Path) -> list[float]:
    """The ``epsilon`` attribute of every ``LayerNormalization`` node, in graph order (functions included).

    Used to check that no LayerNorm was decomposed and that no eps was lost (case T22). ONNX's default epsilon
    (1e-5) is reported where the attribute is absent.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    graphs = [model.graph.node] + [f.node for f in model.functions]
    epsilons = []
    for nodes in graphs:
        for node in nodes:
            if node.op_type == "LayerNormalization":
                eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
                epsilons.append(eps)
    return epsilons


def onnx_opset(onnx_path: str | Path) -> int:
    """The default-domain opset version an ONNX file was written with."""
    import onnx

    model = onnx.load(str(onnx_path))
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

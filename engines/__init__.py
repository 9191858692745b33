"""Inference engines for the SVG SiT and decoder: eager, torch.compile (+CUDA graphs) and TensorRT.

Every engine has the call signature of the module it wraps and the lifecycle
``build() -> warmup(row_counts) -> __call__(...) -> close()`` (see :mod:`engines.base`).
"""

from engines.base import Engine, EagerEngine, EngineError

__all__ = ["Engine", "EagerEngine", "EngineError"]

"""Latent normalisation for the diffusion model and a tool to compute its statistics file.

Source: svg_reference.md §3. The released ``dinov3_sp_stats.pt`` holds ``dinov3_sp_mean`` and ``dinov3_sp_std``,
float32 (1, 1, 392), token-last: they broadcast against token sequences (B, T, C). Normalisation is per channel with
no eps and no extra scale factor: ``(x − mean)/std`` before diffusion, ``x·std + mean`` after sampling.

Compute a stats file from latents (each input a ``.safetensors`` file whose tensors are (B, C, h, w) latents or
(B, T, C) tokens — pick one tensor name with ``--key``):

    python -m svg.latent OUT.safetensors latents_0.safetensors latents_1.safetensors [--key latent]
    python -m svg.latent OUT.pt ... --official     # the released .pt layout instead of ours
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

__all__ = ["LatentNorm", "LatentStatsAccumulator", "to_tokens", "to_latent", "main"]


def to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h·w, C), tokens in row-major order (reference ``view(B, C, T).permute(0, 2, 1)``)."""
    if latent.dim() != 4:
        raise ValueError(f"latent must be (B, C, h, w); got shape {tuple(latent.shape)}")
    b, c = latent.shape[:2]
    return latent.reshape(b, c, -1).transpose(1, 2)


def to_latent(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h·w, C) -> (B, C, h, w); inverse of :func:`to_tokens`.

    Raises:
        ValueError: T != h·w.
    """
    if tokens.dim() != 3 or tokens.shape[1] != h * w:
        raise ValueError(f"tokens must be (B, {h * w}, C) for h={h}, w={w}; got shape {tuple(tokens.shape)}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class LatentNorm(nn.Module):
    """Per-channel latent normalisation with statistics of layout (1, 1, C) (buffers ``mean``, ``std``).

    Raises:
        ValueError: shapes that are not (1, 1, C) or differ, or a std that is not strictly positive.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if mean.dim() != 3 or mean.shape[:2] != (1, 1) or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be (1, 1, C); got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError(f"std must be > 0 in every channel; min is {float(std.min())}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    @property
    def channels(self) -> int:
        """C, the number of latent channels."""
        return self.mean.shape[-1]

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) latent tokens -> (tokens − mean)/std, same shape, dtype of the input."""
        return ((tokens - self.mean) / self.std).to(tokens.dtype)

    def denormalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) normalised tokens -> tokens·std + mean."""
        return (tokens * self.std + self.mean).to(tokens.dtype)

    @classmethod
    def identity(cls, channels: int) -> "LatentNorm":
        """Mean 0, std 1 (for random checkpoints that have no statistics)."""
        return cls(torch.zeros(1, 1, channels), torch.ones(1, 1, channels))


class LatentStatsAccumulator:
    """Streaming per-channel mean and unbiased std over tokens, accumulated in float64.

    Batches are merged with the parallel-variance update (Chan et al. 1979), which avoids the cancellation of the
    naive sum-of-squares formula over hundreds of millions of tokens.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        """Add a batch of latents (B, C, h, w) or tokens (B, T, C).

        Raises:
            ValueError: another rank, or a channel count that differs from earlier batches.
        """
        if batch.dim() == 4:
            batch = to_tokens(batch)
        if batch.dim() != 3:
            raise ValueError(f"batch must be (B, C, h, w) latents or (B, T, C) tokens; got {tuple(batch.shape)}")
        x = batch.reshape(-1, batch.shape[-1]).double()  # (n, C)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"batch has {x.shape[1]} channels; earlier batches had {self._mean.shape[0]}")
        n = x.shape[0]
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self._mean is None:
            self.count, self._mean, self._m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as float32 (1, 1, C); std is unbiased.

        Raises:
            ValueError: fewer than 2 tokens seen.
        """
        if self._mean is None or self.count < 2:
            raise ValueError(f"need at least 2 tokens to compute a std; got {self.count}")
        std = (self._m2 / (self.count - 1)).sqrt()
        return self._mean.float().view(1, 1, -1), std.float().view(1, 1, -1)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: compute a latent statistics file from latent files (see the module docstring)."""
    from safetensors import safe_open

    from svg.checkpoint import save_latent_stats
    from svg.cli import existing_file, guard

    parser = argparse.ArgumentParser(prog="python -m svg.latent", description="Compute latent mean/std statistics")
    parser.add_argument("out", type=Path, help="output file (.safetensors ours, or .pt with --official)")
    parser.add_argument("inputs", type=Path, nargs="+", help=".safetensors files of latents or tokens")
    parser.add_argument("--key", default=None, help="tensor name to read from each input (default: all)")
    parser.add_argument("--official", action="store_true", help="write the released dinov3_sp_stats.pt layout")
    args = parser.parse_args(argv)
    for path in args.inputs:
        existing_file(parser, "inputs", path)
    acc = LatentStatsAccumulator()
    for path in args.inputs:
        with safe_open(str(path), framework="pt") as f:
            if args.key is not None and args.key not in f.keys():
                parser.error(f"argument --key: {args.key!r} is not in {str(path)!r}; allowed: {sorted(f.keys())}")
            keys = [args.key] if args.key else list(f.keys())
            with guard(parser, f"inputs ({path})"):
                for key in keys:
                    acc.update(f.get_tensor(key))
    with guard(parser, "inputs"):
        mean, std = acc.result()
    if args.official:
        torch.save({"dinov3_sp_mean": mean, "dinov3_sp_std": std}, args.out)
    else:
        save_latent_stats(args.out, LatentNorm(mean, std), extra={"tokens": str(acc.count)})
    sys.stdout.write(json.dumps({"out": str(args.out), "tokens": acc.count, "channels": mean.shape[-1]}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SVGPipeline: the SiT, the autoencoder and the latent normalisation, loaded together.

Two sources:

* our directory format (``models/demo/``): ``sit.safetensors``, ``autoencoder.safetensors``,
  ``latent_stats.safetensors``, each with its config in the metadata (docs/ARCHITECTURE.md);
* the released files of HF ``howlin/SVG`` (``V1-SVG-XL-7000K-256x256.pt``,
  ``svg_autoencoder_dinov3s16p_vit-s_epoch40.ckpt``, ``dinov3_sp_stats.pt``); see docs/model.md.

A random tiny checkpoint directory (metadata ``random = "true"``; the images are noise) for server tests:

    python -m svg.pipeline make-random --preset tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch


from svg.autoencoder import SVGAutoencoder
from svg.checkpoint import (
    load_autoencoder,
    load_latent_stats,
    load_sit,
    read_svg,
    save_latent_stats,
    save_svg,
)
from svg.config import AutoencoderConfig, SiTConfig, ae_preset, sit_preset
from svg.latent import LatentNorm, to_latent, to_tokens
from svg.residual import AlignMode
from svg.sit import SiT

__all__ = ["SVGPipeline", "SIT_FILE", "AE_FILE", "STATS_FILE", "make_random", "main"]

SIT_FILE, AE_FILE, STATS_FILE = "sit.safetensors", "autoencoder.safetensors", "latent_stats.safetensors"


@dataclass
class SVGPipeline:
    """The three parts of an SVG model plus free-form string metadata (e.g. ``random``, ``source``).

    ``sit`` works on normalised tokens (B, T, C); ``autoencoder`` maps images (B, 3, H, W) in [-1, 1] to latents
    (B, C, h, w) and back; ``latent_norm`` converts between the two token spaces.

    Raises (on creation):
        ValueError: the parts disagree on the channel count C or the token count T.
    """

    sit: SiT
    autoencoder: SVGAutoencoder
    latent_norm: LatentNorm
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c_sit, c_ae, c_norm = (self.sit.config.in_channels, self.autoencoder.config.latent_channels,
                               self.latent_norm.channels)
        if not c_sit == c_ae == c_norm:
            raise ValueError(f"latent channels disagree: sit.in_channels={c_sit}, autoencoder={c_ae}, "
                             f"latent_stats={c_norm}")
        if self.sit.config.input_size != self.autoencoder.config.latent_size:
            raise ValueError(f"sit.input_size={self.sit.config.input_size} differs from the autoencoder latent "
                             f"side {self.autoencoder.config.latent_size}")

    @property
    def latent_size(self) -> int:
        """h = w of the latent grid (16 for the release)."""
        return self.autoencoder.config.latent_size

    def to(self, device: torch.device | str | None = None, dtype: Optional[torch.dtype] = None) -> "SVGPipeline":
        """Move all parts (in place) and return self; nothing else (kernel choice belongs to the engine that is
        built around the SiT, see ``engines.create``). Latent statistics stay float32."""
        self.sit.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=dtype)
        self.latent_norm.to(device=device)
        return self

    def encode_tokens(self, images: torch.Tensor, align: str | AlignMode = AlignMode.PER_IMAGE) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised tokens (B, T, C) for the SiT."""
        return self.latent_norm.normalize(to_tokens(self.autoencoder.encode(images, align)))

    def decode_tokens(self, tokens: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Normalised tokens (B, T, C) -> images (B, 3, H, W) in [-1, 1] (svg_reference.md §5 output path)."""
        latent = to_latent(self.latent_norm.denormalize(tokens), self.latent_size, self.latent_size)
        return self.autoencoder.decode(latent, clamp=clamp)

    @classmethod
    def from_dir(cls, path: str | Path, device: torch.device | str = "cpu") -> "SVGPipeline":
        """Load our directory format (all three files, configs from their metadata), eval mode.

        Raises:
            FileNotFoundError: a file is missing. CheckpointError: a file does not match its config.
        """
        path = Path(path)
        for name in (SIT_FILE, AE_FILE, STATS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found; a model directory needs {SIT_FILE}, {AE_FILE} "
                                        f"and {STATS_FILE}")
        _, _, metadata = read_svg(path / SIT_FILE, "sit")
        extra = {k: v for k, v in metadata.items() if k not in ("svg_format", "kind", "config")}
        pipe = cls(load_sit(path / SIT_FILE), load_autoencoder(path / AE_FILE), load_latent_stats(path / STATS_FILE),
                   extra)
        return pipe.to(device)

    @classmethod
    def from_released(
        cls,
        sit_path: str | Path,
        autoencoder_path: str | Path,
        stats_path: str | Path,
        sit_config: Optional[SiTConfig] = None,
        autoencoder_config: Optional[AutoencoderConfig] = None,
        device: torch.device | str = "cpu",
    ) -> "SVGPipeline":
        """Load the released files: diffusion ``.pt``, autoencoder ``.ckpt``, ``dinov3_sp_stats.pt``.

        Configs default to the SiT shapes read off the ``.pt`` and the ``svg-ae`` preset. Statistics are sliced to
        the latent channels as the reference does.
        """
        sit = load_sit(sit_path, sit_config)
        ae = load_autoencoder(autoencoder_path, autoencoder_config)
        norm = load_latent_stats(stats_path, channels=ae.config.latent_channels)
        return cls(sit, ae, norm, {"source": "released", "sit": Path(sit_path).name}).to(device)

    def save_dir(self, path: str | Path, extra: Optional[dict[str, str]] = None) -> None:
        """Write our directory format (three safetensors files); ``metadata`` + ``extra`` go into each file."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, **(extra or {})}
        save_svg(path / SIT_FILE, self.sit, self.sit.config, "sit", meta)
        save_svg(path / AE_FILE, self.autoencoder, self.autoencoder.config, "autoencoder", meta)
        save_latent_stats(path / STATS_FILE, self.latent_norm, meta)


def make_random(preset: str, seed: int = 0) -> SVGPipeline:
    """A pipeline with RANDOM weights (SiT and autoencoder presets of the same name), identity latent statistics
    and metadata ``random = "true"``. For tests of the serving stack only: its images are noise.

    The adaLN-Zero init would make the SiT output exactly zero; the zero-initialised layers get small random
    values so the forward pass exercises every term.
    """
    torch.manual_seed(seed)
    sit = SiT(sit_preset(preset))
    with torch.no_grad():
        for name, param in sit.named_parameters():
            if param.requires_grad and not param.any():
                param.normal_(0.0, 0.02)
    ae = SVGAutoencoder(ae_preset(preset))
    norm = LatentNorm.identity(ae.config.latent_channels)
    meta = {"random": "true", "preset": preset, "seed": str(seed),
            "description": "RANDOM weights for tests; not a trained model"}
    return SVGPipeline(sit.eval(), ae.eval(), norm, meta)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``make-random --preset tiny OUT`` writes a random checkpoint directory."""
    from svg.cli import int_type
    from svg.config import AE_PRESETS, SIT_PRESETS

    parser = argparse.ArgumentParser(prog="python -m svg.pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    rnd = sub.add_parser("make-random", help="write a tiny RANDOM checkpoint directory (for tests)")
    rnd.add_argument("out", type=Path)
    rnd.add_argument("--preset", default="tiny", choices=sorted(set(SIT_PRESETS) & set(AE_PRESETS)),
                     help="a preset with both a SiT and an autoencoder config")
    rnd.add_argument("--seed", type=int_type(0, 2**63 - 1), default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        rnd.error(f"argument out: {str(args.out)!r} exists and is not a directory")
    pipe = make_random(args.preset, args.seed)
    pipe.save_dir(args.out)
    sys.stdout.write(json.dumps({"out": str(args.out), **pipe.metadata}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loading the model for serving: pipeline, engines, checkpoint hashes, and the latent <-> image glue.

Everything here runs on the worker thread, which owns the device. The SiT is called only through an engine
(``engines.create`` when available, :class:`engines.base.EagerEngine` otherwise), so compiled and TensorRT engines
plug in without touching the scheduler or the worker loop.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from server.config import ServerConfig

log = logging.getLogger("svg.server")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _make_engine(kind: str, module, *, device: torch.device, dtype: torch.dtype, max_rows: int, decoder: bool,
                 preset: str | None, batch_invariant: bool):
    """Build an engine of ``kind`` around ``module`` through :func:`engines.create`. The decoder's buckets are
    warmed here; the SiT is served through ``engine.stepper`` and the worker warms the step's buckets instead.

    Raises:
        engines.EngineError: the engine cannot be built here (the server then reports the reason on /health).
    """
    import engines

    return engines.create(kind, module, role="decoder" if decoder else "sit", device=device, dtype=dtype,
                          max_rows=max_rows, preset=preset or "custom", warmup=decoder,
                          batch_invariant=batch_invariant)


@dataclass
class LoadedModel:
    """What the worker serves with.

    Attributes:
        pipeline: the ``svg.pipeline.SVGPipeline`` (sit, autoencoder, latent norm).
        sit_engine: an ``engines.Engine`` around the SiT; the worker samples through ``sit_engine.stepper(slots)``.
        decoder_engine: callable ``(latent (R, C, h, w)) -> images (R, 3, H, W)`` in [-1, 1].
        device: the torch device. tokens/channels/grid: latent token count T, channels C, grid side h (= w).
        image_size: model resolution in pixels. num_classes: classes (null label = num_classes).
        checkpoints: file name -> sha256. preset: SiT preset name or ``None``. random_weights: untrained test model.
    """

    pipeline: object
    sit_engine: object
    decoder_engine: object
    device: torch.device
    tokens: int
    channels: int
    grid: int
    image_size: int
    num_classes: int
    checkpoints: dict[str, str]
    preset: str | None
    random_weights: bool
    flops_per_row: float

    # -- latent <-> image ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Normalised tokens ``(R, T, C)`` → images ``(R, 3, H, W)`` float32 in [-1, 1]; NaN/inf propagate to the
        caller's per-row check (never clamp them away here)."""
        from svg.latent import to_latent

        latent = to_latent(self.pipeline.latent_norm.denormalize(tokens.float()), self.grid, self.grid)  # (R,C,h,w)
        return self.decoder_engine(latent).float()  # (R, 3, H, W)

    @torch.no_grad()
    def encode_images(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, S, S, 3)`` at model resolution → raw latent ``(B, C, h, w)`` float32 (not normalised)."""
        x = torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S)
        return self.pipeline.autoencoder.encode(x).float()

    def to_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent ``(B, C, h, w)`` → normalised tokens ``(B, T, C)`` (the SiT's input space)."""
        from svg.latent import to_tokens

        return self.pipeline.latent_norm.normalize(to_tokens(latent))


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(R, 3, H, W)`` float in [-1, 1] → ``(R, H, W, 3)`` uint8 (round half up, clamped)."""
    x = ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def load_model(cfg: ServerConfig) -> LoadedModel:
    """Load the pipeline from ``cfg`` onto its device and wrap the SiT and decoder in engines.

    Raises:
        FileNotFoundError: the model directory or a checkpoint file is missing (message names the path).
        engines.EngineError: the configured engine cannot be built.
    """
    from svg.pipeline import SVGPipeline

    from server.metrics import preset_flops_per_row

    device = torch.device(cfg.resolved_device())
    dtype = _DTYPES[cfg.dtype]
    if cfg.sit_checkpoint is not None:
        from svg.config import sit_preset

        paths = [cfg.sit_checkpoint, cfg.ae_checkpoint, cfg.latent_stats]
        for name, p in zip(("sit_checkpoint", "ae_checkpoint", "latent_stats"), paths):
            if p is None or not Path(p).is_file():
                raise FileNotFoundError(f"{name}={p} is not a file (released checkpoints need all three files)")
        pipe = SVGPipeline.from_released(cfg.sit_checkpoint, cfg.ae_checkpoint, cfg.latent_stats,
                                         sit_config=sit_preset(cfg.preset), device=device)
    else:
        model_dir = Path(cfg.model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model_dir {model_dir} does not exist (make one with "
                                    f"`python -m svg.pipeline make-random --preset tiny {model_dir}`)")
        paths = sorted(model_dir.glob("*.safetensors"))
        pipe = SVGPipeline.from_dir(model_dir, device=device)
    pipe.sit.eval()
    pipe.autoencoder.eval()
    sit_cfg = pipe.sit.config
    tokens, channels, grid = sit_cfg.num_tokens, sit_cfg.in_channels, sit_cfg.input_size
    image_size = pipe.autoencoder.config.dino.img_size
    preset = pipe.metadata.get("preset") or cfg.preset
    sit_engine = _make_engine(cfg.sit_engine, pipe.sit, device=device, dtype=dtype, max_rows=cfg.max_rows,
                              decoder=False, preset=preset, batch_invariant=cfg.batch_invariant)
    decoder_engine = _make_engine(cfg.decoder_engine, pipe.autoencoder, device=device, dtype=dtype,
                                  max_rows=cfg.decode_batch, decoder=True, preset=preset,
                                  batch_invariant=cfg.batch_invariant)
    flops = preset_flops_per_row(sit_cfg.hidden_size, sit_cfg.depth, tokens, channels)
    return LoadedModel(
        pipeline=pipe, sit_engine=sit_engine, decoder_engine=decoder_engine, device=device, tokens=tokens,
        channels=channels, grid=grid, image_size=image_size, num_classes=sit_cfg.num_classes,
        checkpoints={Path(p).name: sha256_file(Path(p)) for p in paths},
        preset=preset, random_weights=pipe.metadata.get("random") == "true",
        flops_per_row=flops)

"""The SVG autoencoder: frozen DINOv3 + aligned residual encoder -> latent; LDM decoder -> image.

Source: svg_reference.md §2 (reference ``DinoDecoder``). Latent layout (B, C, h, w): channels 0..dino_dim−1 are the
DINO final-norm patch tokens, the last ``residual.out_dim`` channels the residual encoder output after alignment
(Eq. 6); (h, w) is the patch grid (16×16 at 256 px for the released model). Submodules are named ``encoder``
(DINOv3, timm Eva names internally), ``extra_vit`` and ``decoder`` as in the official checkpoint; see
``svg.checkpoint`` for the official-layout conversions.
"""

from __future__ import annotations

import torch
from torch import nn

from svg.config import AutoencoderConfig
from svg.decoder import Decoder
from svg.dinov3 import build_dinov3, imagenet_normalize, patch_tokens, resize_center_crop
from svg.residual import AlignMode, ResidualEncoder, match_distribution

__all__ = ["SVGAutoencoder"]


class SVGAutoencoder(nn.Module):
    """SVG autoencoder.

    Example:
        >>> ae = SVGAutoencoder(AE_PRESETS["tiny"]).eval()
        >>> z = ae.encode(torch.rand(2, 3, 32, 32) * 2 - 1)  # (2, 36, 8, 8)
        >>> x = ae.decode(z)  # (2, 3, 32, 32) in [-1, 1]

    The DINOv3 encoder is frozen: no gradients, and it stays in eval mode even when the module is put in train
    mode (no RoPE jitter; svg_reference.md §2.9 notes the reference trained with jitter by accident).
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_dinov3(config.dino)
        self.extra_vit = ResidualEncoder(config.residual)
        self.decoder = Decoder(config.decoder)

    def train(self, mode: bool = True) -> "SVGAutoencoder":
        """Set train/eval mode on the residual encoder and decoder; the frozen DINOv3 always stays in eval."""
        super().train(mode)
        self.encoder.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size -> ImageNet-normalised (B, 3, S, S) at the model resolution S.

        Inputs not S×S are resized (shorter side to S, bilinear, antialiased) and center-cropped; this is the
        documented rule for arbitrary sizes, because the residual encoder and the SiT only work at S.

        Raises:
            ValueError: not a (B, 3, H, W) floating tensor.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float (B, 3, H, W) tensor in [-1, 1]; got shape {tuple(images.shape)} "
                             f"dtype {images.dtype}")
        return imagenet_normalize(resize_center_crop(images, self.config.dino.img_size))

    def encode_features(
        self, x_dino: torch.Tensor, align: "str | AlignMode" = AlignMode.PER_IMAGE
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent of ImageNet-normalised S×S images, plus the raw residual (before alignment).

        Args:
            x_dino: (B, 3, S, S) ImageNet-normalised.
            align: ``per_image`` (default; no batch dependence) or ``batch`` (reference behaviour).
        Returns:
            latent (B, C, h, w) and residual_raw (B, residual_dim, h·w).
        """
        b = x_dino.shape[0]
        dino = patch_tokens(self.encoder, x_dino).transpose(1, 2)  # (B, dino_dim, N)
        residual = self.extra_vit(x_dino)  # (B, residual_dim, N)
        aligned = match_distribution(dino, residual, align, self.config.align_eps)
        grid = self.config.latent_size
        latent = torch.cat([dino, aligned], dim=1).reshape(b, -1, grid, grid)
        return latent, residual

    def encode(self, images: torch.Tensor, align: "str | AlignMode" = AlignMode.PER_IMAGE) -> torch.Tensor:
        """Images in [-1, 1] -> latent.

        Args:
            images: (B, 3, H, W) float in [-1, 1]; other sizes than the model's are resized/cropped (see
                :meth:`preprocess`).
            align: ``per_image`` (serving default: each image's latent depends on it alone) or ``batch``
                (reference: alignment statistics over the whole batch; see svg.residual).
        Returns:
            (B, C, h, w) float latent, C = dino_dim + residual_dim (392 × 16 × 16 for the release).
        Raises:
            ValueError: bad image tensor or align mode.
        """
        return self.encode_features(self.preprocess(images), align)[0]

    def decode(self, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latent (B, C, h, w) -> images (B, 3, 16h, 16w) for the release; clamped to [-1, 1] unless
        ``clamp=False`` (the reference's raw decoder output).

        Raises:
            ValueError: the channel count is not the config's latent channels.
        """
        if latent.dim() != 4 or latent.shape[1] != self.config.latent_channels:
            raise ValueError(f"latent must be (B, {self.config.latent_channels}, h, w); got {tuple(latent.shape)}")
        out = self.decoder(latent)
        return out.clamp(-1, 1) if clamp else out

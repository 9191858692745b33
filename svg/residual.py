"""The residual encoder and the distribution alignment of its output to the DINO features (paper Eq. 6).

Source: svg_reference.md §2.4 and §2.6 (reference ``create_small_vit_s`` and ``match_distribution``).

The residual encoder is a torchvision ``VisionTransformer`` whose head is Linear–GELU–Linear down to ``out_dim``
channels; keys are torchvision's (``class_token``, ``conv_proj``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_i.*``, ``encoder.ln``, ``heads.0``, ``heads.2``). It sees the same ImageNet-normalised
input as DINO and only supports its configured image size (torchvision asserts it).

Alignment modes (:class:`AlignMode`):

* ``batch``: the reference. Scalar mean and (unbiased) std of each side are taken over the whole batch and all
  tokens, averaged over channels, detached, and recomputed on every call, so an image's residual channels depend
  on the other images in the batch.
* ``per_image``: the same computation with each image's own statistics (its N tokens). An image's latent never
  depends on its neighbours; for a batch of one both modes are identical. This is the serving default.
"""

from __future__ import annotations

import enum

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from svg.config import ResidualConfig

__all__ = ["AlignMode", "ResidualEncoder", "match_distribution"]


class AlignMode(str, enum.Enum):
    """Statistics of the alignment: over the whole batch (reference) or per image (serving default)."""

    BATCH = "batch"
    PER_IMAGE = "per_image"


def _parse_align(mode: "str | AlignMode") -> AlignMode:
    try:
        return AlignMode(mode)
    except ValueError:
        raise ValueError(f"align={mode!r} is invalid; allowed: {[m.value for m in AlignMode]}") from None


def match_distribution(
    h: torch.Tensor, h_res: torch.Tensor, mode: "str | AlignMode" = AlignMode.BATCH, eps: float = 1e-6
) -> torch.Tensor:
    """Align ``h_res`` to the scalar mean/std of ``h`` (paper Eq. 6, reference behaviour).

    ``out = (h_res − m_r) / (s_r + eps) · s_h + m_h`` where m, s are per-channel means and unbiased stds over
    (batch, tokens) — or over tokens only in ``per_image`` mode — averaged over channels, and detached.

    Args:
        h: (B, C1, N) DINO features.
        h_res: (B, C2, N) residual features, same B and N.
        mode: ``batch`` (reference) or ``per_image``.
        eps: added to the residual std (1e-6 in the reference).

    Returns:
        (B, C2, N), dtype of h_res.

    Raises:
        ValueError: wrong ranks or mismatched B / N, or an unknown mode.
    """
    mode = _parse_align(mode)
    if h.dim() != 3 or h_res.dim() != 3 or h.shape[0] != h_res.shape[0] or h.shape[2] != h_res.shape[2]:
        raise ValueError(f"h (B, C1, N) and h_res (B, C2, N) must share B and N; got {tuple(h.shape)} and "
                         f"{tuple(h_res.shape)}")
    dims = (0, 2) if mode is AlignMode.BATCH else (2,)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=dims).mean(dim=-1)  # () or (B,)
        std = x.std(dim=dims).mean(dim=-1)  # unbiased, like torch.std's default
        if mode is AlignMode.PER_IMAGE:
            mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        return mean.detach(), std.detach()

    m_h, s_h = stats(h)
    m_r, s_r = stats(h_res)
    return (h_res - m_r) / (s_r + eps) * s_h + m_h


class ResidualEncoder(VisionTransformer):
    """torchvision ViT with a Linear–GELU–Linear head applied to every patch token.

    ``forward(x (B, 3, S, S) ImageNet-normalised, S = config.image_size) -> (B, out_dim, N)``, N = (S/patch)²,
    row-major. Dropout (0.1 in the release) is active only in train mode.
    """

    def __init__(self, config: ResidualConfig) -> None:
        super().__init__(
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            mlp_dim=config.mlp_dim,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
        )
        self.heads = nn.Sequential(
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.GELU(), nn.Linear(config.hidden_dim, config.out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._process_input(x)  # (B, N, hidden); checks the image size
        cls = self.class_token.expand(tokens.shape[0], -1, -1)
        tokens = self.encoder(torch.cat([cls, tokens], dim=1))  # adds positions, layers, final LN
        return self.heads(tokens[:, 1:]).transpose(1, 2)  # (B, out_dim, N)

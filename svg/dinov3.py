"""The frozen DINOv3 ViT-S/16+ encoder, built with timm's Eva and loaded from DINOv3-native key names.

Source: svg_reference.md §2.1–2.3. timm's ``vit_small_plus_patch16_dinov3_qkvb`` family (RoPE base 100 with
separate coordinate normalisation, SwiGLU, LayerScale, 4 storage tokens, LayerNorm eps 1e-5, q/v bias with the
k bias fixed at 0) reproduces the reference ``forward_features`` exactly once the weights pass through
``timm.models.eva.checkpoint_filter_fn``. This module adds the inverse remap so weights can be written back in the
official layout (the ``encoder.*`` part of the autoencoder ``.ckpt``, or Meta's standalone ``.pth``).

SVG uses the final-norm patch tokens only: token index ``1 + num_storage_tokens`` onwards (cls and the storage
tokens dropped), row-major over the (H/patch, W/patch) grid.
"""

from __future__ import annotations

from typing import Mapping

import timm
import torch
import torch.nn.functional as F
from timm.models.eva import Eva, checkpoint_filter_fn

from svg.config import DinoConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_dinov3",
    "dinov3_to_timm",
    "timm_to_dinov3",
    "imagenet_normalize",
    "patch_tokens",
    "resize_center_crop",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_dinov3(config: DinoConfig) -> Eva:
    """A DINOv3-style Eva (timm) with the sizes of ``config``, random weights, eval mode, frozen.

    Args:
        config: :class:`DinoConfig`; the defaults give ViT-S/16+ (28.7M params).
    Returns:
        timm ``Eva``; ``forward_features(x (B,3,H,W) ImageNet-normalised) -> (B, 1+storage+H·W/patch², dim)``.
        H and W may be any multiples of the patch (RoPE, ``dynamic_img_size``).
    """
    model = timm.create_model(
        "vit_small_plus_patch16_dinov3_qkvb",
        pretrained=False,
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.swiglu_hidden / config.embed_dim,
        num_reg_tokens=config.num_storage_tokens,
        rope_temperature=config.rope_base,
        init_values=config.layerscale_init,
        num_classes=0,
    )
    for module in model.modules():  # norm eps is fixed by the preset; make the config authoritative
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = config.norm_eps
    model.eval()
    model.requires_grad_(False)
    return model


def dinov3_to_timm(state_dict: Mapping[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    """Remap a DINOv3-native state dict (no prefix) to timm Eva names.

    Drops what timm does not hold: ``mask_token`` (pretraining only), ``rope_embed.periods`` (recomputed) and
    ``attn.qkv.bias_mask`` (the k bias is fixed at 0 in timm). Those are checked first so that nothing that
    changes the output is dropped silently.

    Raises:
        ValueError: the RoPE periods differ from the model's, or a bias_mask does not zero exactly the k third.
    """
    periods = state_dict.get("rope_embed.periods")
    if periods is not None:
        mine = model.rope.periods.to(periods.dtype)
        if periods.shape != mine.shape or not torch.allclose(periods, mine, rtol=1e-5, atol=0):
            raise ValueError(f"rope_embed.periods={periods.tolist()} differ from the model's RoPE periods "
                             f"{mine.tolist()} (rope_base / head_dim mismatch)")
    for key, mask in state_dict.items():
        if key.endswith("qkv.bias_mask"):
            third = mask.numel() // 3
            want = torch.ones_like(mask)
            want[third: 2 * third] = 0
            if not torch.equal(mask, want):
                raise ValueError(f"{key} must be 1 for q and v and 0 for k (mask_k_bias); got another pattern")
    return checkpoint_filter_fn(dict(state_dict), model)


def timm_to_dinov3(state_dict: Mapping[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    """Inverse of :func:`dinov3_to_timm`: timm Eva names -> DINOv3-native names (official layout).

    Rebuilds ``attn.qkv.bias`` as [q_bias, 0, v_bias] with its ``bias_mask`` (1, 0, 1), ``rope_embed.periods``
    from the model and a zero ``mask_token`` (1, dim) (unused at inference, present in the official files).
    """
    out: dict[str, torch.Tensor] = {}
    renames = (("reg_token", "storage_tokens"), ("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma"),
               ("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."))
    for key, value in state_dict.items():
        if key.endswith("attn.q_bias") or key.endswith("attn.v_bias") or key.endswith("attn.k_bias"):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    for i in range(len(model.blocks)):
        q = state_dict[f"blocks.{i}.attn.q_bias"]
        v = state_dict[f"blocks.{i}.attn.v_bias"]
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones_like(q), torch.zeros_like(q),
                                                           torch.ones_like(v)])
    out["rope_embed.periods"] = model.rope.periods.detach().clone().float()
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    return out


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> ImageNet-normalised: ((x + 1)/2 − mean)/std (svg_reference.md §2.3)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), then center-crop to ``size``×``size``.

    This is the rule for inputs that are not at the model resolution (svg_reference.md §2.3 uses the same
    "shorter side, then center crop" rule for its validation data). Identity when already size×size.

    Args:
        images: (B, C, H, W) float.
    Returns:
        (B, C, size, size), same dtype.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top: top + size, left: left + size]


def patch_tokens(model: Eva, x: torch.Tensor) -> torch.Tensor:
    """Final-norm patch tokens of ImageNet-normalised images.

    Args:
        model: the DINOv3 Eva.
        x: (B, 3, H, W), H and W multiples of the patch size.
    Returns:
        (B, H·W/patch², dim) row-major, cls and storage tokens dropped (index ``model.num_prefix_tokens`` on).
    Raises:
        ValueError: a side that is not a multiple of the patch size.
    """
    patch = model.patch_embed.patch_size[0]
    h, w = x.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"image size (H, W)=({h}, {w}) is invalid; allowed: multiples of the patch size {patch} "
                         "(or resize with svg.dinov3.resize_center_crop)")
    return model.forward_features(x)[:, model.num_prefix_tokens:]

"""Frozen model configurations and the preset tables.

Every model part is built from one of these dataclasses. They validate themselves on creation, and
``from_dict`` rejects unknown keys by name so that a typo in a JSON config never passes silently.

The numbers of the full-size presets are those of the reference release (svg_reference.md §2 and §4):
DINOv3 ViT-S/16+ (384 dims, 12 blocks, 6 heads, 4 storage tokens, RoPE base 100), a torchvision ViT residual
encoder with an 8-channel head, the LDM decoder (ch 128, ch_mult 1,1,2,2,4) and the SiT family B/L/XL/XXL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

__all__ = [
    "DinoConfig",
    "ResidualConfig",
    "DecoderConfig",
    "AutoencoderConfig",
    "SiTConfig",
    "SIT_PRESETS",
    "AE_PRESETS",
    "sit_preset",
    "ae_preset",
]

_C = TypeVar("_C")


def _check(condition: bool, field_name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}={value!r} is invalid; allowed: {allowed}")


def _from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; allowed keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


class _ConfigMixin:
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build the config from a plain dict (e.g. parsed JSON).

        Raises:
            ValueError: a key that is not a field of this config (the message names it), or an invalid value.
        """
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict; nested configs become nested dicts and tuples become lists."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _ConfigMixin):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class DinoConfig(_ConfigMixin):
    """The frozen DINOv3 encoder (an Eva ViT with RoPE, SwiGLU, LayerScale and storage tokens).

    ``img_size`` is the model resolution in pixels (256 for SVG); inputs of other sides that are multiples of
    ``patch_size`` also work through RoPE. ``swiglu_hidden`` is the SwiGLU hidden width (1536 for ViT-S/16+).
    """

    img_size: int = 256
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    swiglu_hidden: int = 1536
    num_storage_tokens: int = 4
    rope_base: float = 100.0
    layerscale_init: float = 1e-5
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.patch_size > 0 and self.img_size % self.patch_size == 0, "DinoConfig.img_size", self.img_size,
               f"a positive multiple of patch_size={self.patch_size}")
        _check(self.num_heads > 0 and self.embed_dim % self.num_heads == 0, "DinoConfig.embed_dim", self.embed_dim,
               f"a multiple of num_heads={self.num_heads}")
        _check((self.embed_dim // self.num_heads) % 4 == 0, "DinoConfig.num_heads", self.num_heads,
               "a value giving a head_dim divisible by 4 (2-D RoPE)")
        _check(self.depth >= 1, "DinoConfig.depth", self.depth, ">= 1")
        _check(self.swiglu_hidden > 0 and self.swiglu_hidden % 8 == 0, "DinoConfig.swiglu_hidden",
               self.swiglu_hidden, "a positive multiple of 8")
        _check(self.num_storage_tokens >= 0, "DinoConfig.num_storage_tokens", self.num_storage_tokens, ">= 0")

    @property
    def grid(self) -> int:
        """Patch tokens per side at the model resolution."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class ResidualConfig(_ConfigMixin):
    """The residual encoder: a torchvision ViT whose head is Linear-GELU-Linear down to ``out_dim`` channels."""

    image_size: int = 256
    patch_size: int = 16
    num_layers: int = 6
    num_heads: int = 8
    hidden_dim: int = 384
    mlp_dim: int = 1536
    out_dim: int = 8
    dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        _check(self.patch_size > 0 and self.image_size % self.patch_size == 0, "ResidualConfig.image_size",
               self.image_size, f"a positive multiple of patch_size={self.patch_size}")
        _check(self.num_heads > 0 and self.hidden_dim % self.num_heads == 0, "ResidualConfig.hidden_dim",
               self.hidden_dim, f"a multiple of num_heads={self.num_heads}")
        _check(self.out_dim >= 1, "ResidualConfig.out_dim", self.out_dim, ">= 1")


@dataclass(frozen=True)
class DecoderConfig(_ConfigMixin):
    """The LDM convolutional decoder (reference ``Decoder``; GroupNorm with 32 groups, so every width is a
    multiple of 32). ``resolution`` is the output side in pixels; the latent side is
    ``resolution // 2**(len(ch_mult) - 1)``."""

    z_channels: int = 392
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    out_ch: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(len(self.ch_mult) >= 1, "DecoderConfig.ch_mult", self.ch_mult, "a non-empty tuple")
        for m in self.ch_mult:
            _check((self.ch * m) % 32 == 0, "DecoderConfig.ch", self.ch, "ch * every ch_mult a multiple of 32")
        _check(self.resolution % (2 ** (len(self.ch_mult) - 1)) == 0, "DecoderConfig.resolution", self.resolution,
               f"a multiple of {2 ** (len(self.ch_mult) - 1)}")

    @property
    def latent_size(self) -> int:
        """Latent side at the decoder's input."""
        return self.resolution // 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class AutoencoderConfig(_ConfigMixin):
    """The SVG autoencoder: DINOv3 + residual encoder (aligned, Eq. 6) + decoder.

    ``legacy_embed_dim`` only sizes the unused ``norm_vit`` LayerNorm (residual out_dim + 32 in the release)
    that the official checkpoint layout carries. ``align_eps`` is the eps of the alignment (1e-6).
    """

    dino: DinoConfig = field(default_factory=DinoConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    align_eps: float = 1e-6
    legacy_embed_dim: int = 32

    def __post_init__(self) -> None:
        for name, typ in (("dino", DinoConfig), ("residual", ResidualConfig), ("decoder", DecoderConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, typ.from_dict(value))
        want = self.dino.embed_dim + self.residual.out_dim
        _check(self.decoder.z_channels == want, "AutoencoderConfig.decoder.z_channels", self.decoder.z_channels,
               f"dino.embed_dim + residual.out_dim = {want}")
        _check(self.residual.image_size == self.dino.img_size, "AutoencoderConfig.residual.image_size",
               self.residual.image_size, f"equal to dino.img_size={self.dino.img_size}")
        _check(self.residual.image_size // self.residual.patch_size == self.dino.grid,
               "AutoencoderConfig.residual.patch_size", self.residual.patch_size,
               f"a patch giving the DINO grid of {self.dino.grid} tokens per side")
        _check(self.decoder.latent_size == self.dino.grid, "AutoencoderConfig.decoder.resolution",
               self.decoder.resolution, f"{self.dino.grid} * 2**(len(ch_mult)-1) (latent side = DINO grid)")

    @property
    def latent_channels(self) -> int:
        """C of the latent (B, C, h, w): DINO channels first, then residual channels."""
        return self.dino.embed_dim + self.residual.out_dim

    @property
    def latent_size(self) -> int:
        """h = w of the latent at the model resolution."""
        return self.dino.grid


@dataclass(frozen=True)
class SiTConfig(_ConfigMixin):
    """The diffusion transformer (reference ``DiT`` in ``models_SVG.py``, svg_reference.md §4).

    ``input_size`` is the token grid side (T = input_size²), ``in_channels`` the latent channels C.
    The output has ``2·C`` channels when ``learn_sigma`` (only the first C are the velocity), else C.
    Label ``num_classes`` is the null class used by guidance and label dropout.
    """

    input_size: int = 16
    in_channels: int = 392
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    qk_norm: bool = True

    def __post_init__(self) -> None:
        _check(self.num_heads > 0 and self.hidden_size % self.num_heads == 0, "SiTConfig.hidden_size",
               self.hidden_size, f"a multiple of num_heads={self.num_heads}")
        _check(self.hidden_size % 4 == 0, "SiTConfig.hidden_size", self.hidden_size,
               "a multiple of 4 (2-D sin-cos positions)")
        _check(self.input_size >= 1, "SiTConfig.input_size", self.input_size, ">= 1")
        _check(self.depth >= 1, "SiTConfig.depth", self.depth, ">= 1")
        _check(0.0 <= self.class_dropout_prob < 1.0, "SiTConfig.class_dropout_prob", self.class_dropout_prob,
               "[0, 1)")

    @property
    def out_channels(self) -> int:
        """Output channels per token: 2·in_channels with learn_sigma (velocity first), else in_channels."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        """hidden_size / num_heads (72 for SVG-XL)."""
        return self.hidden_size // self.num_heads

    @property
    def num_tokens(self) -> int:
        """T = input_size² (256 at 256 px)."""
        return self.input_size * self.input_size

    @classmethod
    def from_reference(cls, ref: Mapping[str, Any]) -> "SiTConfig":
        """Build from the reference ``DiT(...)`` keyword arguments (as in the parity manifest).

        Accepts the reference-only keys ``patch_size`` (must be 1), ``use_swiglu`` (must be false) and
        ``head_dim`` (must equal hidden_size / num_heads); every other key must be a field.

        Raises:
            ValueError: an unsupported value of a reference-only key, or an unknown key.
        """
        data = dict(ref)
        patch = data.pop("patch_size", 1)
        _check(patch == 1, "patch_size", patch, "1 (SVG uses token inputs, no patchify)")
        swiglu = data.pop("use_swiglu", False)
        _check(not swiglu, "use_swiglu", swiglu, "false (the reference's SwiGLU path was removed)")
        head_dim = data.pop("head_dim", None)
        config = cls.from_dict(data)
        if head_dim is not None:
            _check(head_dim == config.head_dim, "head_dim", head_dim, f"hidden_size/num_heads = {config.head_dim}")
        return config


# ---------------------------------------------------------------------------------------------------------
# Presets. Full sizes from svg_reference.md §4 (param counts there); `tiny` keeps CPU tests fast; `demo` is the
# small model the training package trains (its lines may be tuned by the training engineer).
# ---------------------------------------------------------------------------------------------------------

SIT_PRESETS: dict[str, SiTConfig] = {
    "SVG-B": SiTConfig(hidden_size=768, depth=12, num_heads=12),
    "SVG-L": SiTConfig(hidden_size=1024, depth=24, num_heads=16),
    "SVG-XL": SiTConfig(hidden_size=1152, depth=28, num_heads=16),
    "SVG-XXL": SiTConfig(hidden_size=1280, depth=32, num_heads=20),
    "tiny": SiTConfig(input_size=8, in_channels=36, hidden_size=64, depth=2, num_heads=2),
    "demo": SiTConfig(input_size=8, in_channels=104, hidden_size=128, depth=4, num_heads=4, num_classes=10),
}

AE_PRESETS: dict[str, AutoencoderConfig] = {
    "svg-ae": AutoencoderConfig(),
    "tiny": AutoencoderConfig(
        dino=DinoConfig(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, swiglu_hidden=64),
        residual=ResidualConfig(image_size=32, patch_size=4, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                                out_dim=4),
        decoder=DecoderConfig(z_channels=36, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,),
                              resolution=32),
    ),
    "demo": AutoencoderConfig(
        dino=DinoConfig(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, swiglu_hidden=256),
        residual=ResidualConfig(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=96, mlp_dim=384,
                                out_dim=8),
        decoder=DecoderConfig(z_channels=104, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                              resolution=32),
    ),
}


def sit_preset(name: str) -> SiTConfig:
    """The SiT config of a preset name.

    Raises:
        ValueError: unknown name (the message lists the presets).
    """
    if name not in SIT_PRESETS:
        raise ValueError(f"unknown SiT preset {name!r}; allowed: {sorted(SIT_PRESETS)}")
    return SIT_PRESETS[name]


def ae_preset(name: str) -> AutoencoderConfig:
    """The autoencoder config of a preset name.

    Raises:
        ValueError: unknown name (the message lists the presets).
    """
    if name not in AE_PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}; allowed: {sorted(AE_PRESETS)}")
    return AE_PRESETS[name]

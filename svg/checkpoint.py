"""Checkpoint loading and saving: the released (official) layouts and our safetensors format.

Official layouts (svg_reference.md §7):

* Diffusion ``.pt``: ``{"ema": state_dict}`` (released), ``{"model": ..., "ema": ..., ...}`` (internal trainer;
  ``ema`` is preferred) or a bare state dict, reference ``DiT`` key names.
* Autoencoder Lightning ``.ckpt``: ``state_dict`` with prefixes ``encoder.`` (DINOv3-native names),
  ``extra_vit.`` (torchvision ViT) and ``decoder.`` (LDM). Keys the release carries but never uses are skipped by
  an explicit allow-list (:data:`AE_UNUSED_PREFIXES`): ``norm_vit.*`` (an unused LayerNorm), ``mask_token``
  (residual masking, training only) and ``loss.*`` (LPIPS / discriminator / logvar of the training loss).
* Meta's standalone DINOv3 ``.pth``: a bare state dict in DINOv3-native names.

Ours: a ``.safetensors`` file whose metadata holds ``svg_format = "1"``, ``kind`` (``sit`` | ``autoencoder`` |
``latent_stats``) and ``config`` (the dataclass as JSON); see docs/ARCHITECTURE.md.

Loading is strict everywhere: every missing or unexpected key is an error that lists them. Keys with a
``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix are rejected with a message rather than stripped, so a
wrongly saved file is noticed; strip them yourself if you know the file is otherwise right.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from svg.autoencoder import SVGAutoencoder
from svg.config import AE_PRESETS, AutoencoderConfig, DinoConfig, SiTConfig
from svg.dinov3 import build_dinov3, dinov3_to_timm, timm_to_dinov3
from svg.latent import LatentNorm
from svg.sit import SiT

__all__ = [
    "FORMAT_VERSION",
    "AE_UNUSED_PREFIXES",
    "CheckpointError",
    "save_svg",
    "read_svg",
    "load_state_dict_strict",
    "read_sit_state_dict",
    "infer_sit_config",
    "drop_sigma_rows",
    "load_sit",
    "load_autoencoder",
    "load_dinov3",
    "load_latent_stats",
    "save_latent_stats",
    "official_sit_state_dict",
    "official_autoencoder_state_dict",
    "save_official_sit",
    "save_official_autoencoder",
]

FORMAT_VERSION = "1"
# Keys of the released autoencoder .ckpt that the model never uses (svg_reference.md §2.5, §2.4, §7).
AE_UNUSED_PREFIXES = ("norm_vit.", "mask_token", "loss.")
_KINDS = ("sit", "autoencoder", "latent_stats")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: lists every missing / unexpected / mis-shaped key."""


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _reject_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    for prefix in _WRAPPER_PREFIXES:
        bad = [k for k in state_dict if k.startswith(prefix)]
        if bad:
            raise CheckpointError(
                f"{path}: {len(bad)} keys start with {prefix!r} (e.g. {bad[0]!r}), a DDP/torch.compile wrapper "
                f"prefix; save the unwrapped model's state_dict, or strip {prefix!r} explicitly before loading"
            )


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """``module.load_state_dict(state_dict, strict=True, assign=assign)`` with a readable error.

    Raises:
        CheckpointError: listing every missing key, unexpected key and shape mismatch, naming ``source``.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} does not match {type(module).__name__}: missing keys {missing}; "
                              f"unexpected keys {unexpected}; shape mismatches {shapes}")
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)


# ------------------------------------------------------------------------------------------------ our format


def save_svg(
    path: str | Path,
    state: nn.Module | Mapping[str, torch.Tensor],
    config: Any,
    kind: str,
    extra: Optional[Mapping[str, str]] = None,
) -> None:
    """Write our safetensors format: tensors plus metadata ``svg_format``, ``kind``, ``config`` (JSON).

    Tensors are detached, cloned and made contiguous first, so modules whose weights share storage (e.g. tied
    or windowed tensors loaded from a .ckpt) save without safetensors' shared-memory error.

    Args:
        path: output ``.safetensors`` file.
        state: a module (its state_dict is saved) or a state dict.
        config: a config dataclass with ``to_dict()`` or a JSON-able dict.
        kind: ``sit``, ``autoencoder`` or ``latent_stats``.
        extra: more string metadata (e.g. ``{"random": "true"}``).
    Raises:
        ValueError: unknown kind, or extra metadata overriding a reserved key.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r} is invalid; allowed: {list(_KINDS)}")
    state_dict = state.state_dict() if isinstance(state, nn.Module) else state
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    metadata = {"svg_format": FORMAT_VERSION, "kind": kind, "config": json.dumps(config_dict, sort_keys=True)}
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"extra metadata key {key!r} is reserved")
        metadata[key] = str(value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    # safetensors writes through a private temporary file and keeps its mode, 0600; a model directory is meant to be
    # read by other users (the container's non-root user reading a host-exported directory): 0644 like torch.save.
    os.chmod(path, 0o644)


def read_svg(path: str | Path, kind: Optional[str] = None) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """Read one of our files: (config dict, tensors, metadata).

    Raises:
        CheckpointError: not our format, an unsupported format version, or another kind than ``kind``.
    """
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("svg_format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: svg_format={metadata.get('svg_format')!r}; allowed: {FORMAT_VERSION!r} "
                              "(is this one of our safetensors files?)")
    if kind is not None and metadata.get("kind") != kind:
        raise CheckpointError(f"{path}: kind={metadata.get('kind')!r}; expected {kind!r}")
    return json.loads(metadata.get("config", "{}")), tensors, metadata


# ------------------------------------------------------------------------------------------------ SiT


def read_sit_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The SiT state dict of an official ``.pt``: ``ema`` if present, else ``model``, else the bare dict.

    Raises:
        CheckpointError: not a dict of tensors, or wrapper prefixes (see module docstring).
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    state_dict = ckpt.get("ema", ckpt.get("model", ckpt))
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: no 'ema' / 'model' state dict and not a bare state dict; top-level keys "
                              f"{sorted(ckpt)[:10]}")
    _reject_wrapper_prefixes(state_dict, path)
    return dict(state_dict)


def infer_sit_config(state_dict: Mapping[str, torch.Tensor], class_dropout_prob: float = 0.1) -> SiTConfig:
    """Read the SiT sizes off a reference-layout state dict (ln1, pos_embed, blocks, q_norm, label table).

    The head count comes from ``q_norm`` (head_dim), so this needs a QK-norm model.

    Raises:
        CheckpointError: a key the inference needs is missing.
    """
    try:
        hidden, in_ch = state_dict["ln1.weight"].shape
        tokens = state_dict["pos_embed"].shape[1]
        head_dim = state_dict["blocks.0.attn.q_norm.weight"].shape[0]
        classes = state_dict["y_embedder.embedding_table.weight"].shape[0] - 1
        out_ch = state_dict["final_layer.linear.weight"].shape[0]
        mlp = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"cannot infer the SiT config: key {exc} missing; pass the config explicitly") from exc
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    side = int(round(tokens**0.5))
    return SiTConfig(input_size=side, in_channels=in_ch, hidden_size=hidden, depth=depth,
                     num_heads=hidden // head_dim, mlp_ratio=mlp / hidden, num_classes=classes,
                     learn_sigma=out_ch == 2 * in_ch, class_dropout_prob=class_dropout_prob)


def drop_sigma_rows(state_dict: dict[str, torch.Tensor], config: SiTConfig) -> tuple[dict, SiTConfig]:
    """Drop the unused second half of the output rows (learn_sigma) after checking it is exactly zero.

    Those rows get no gradient in training (velocity = first C outputs), so with zero init they stay 0
    (svg_reference.md §4). Returns the sliced state dict and the config with ``learn_sigma=False``.

    Raises:
        CheckpointError: the rows are not all zero (they would change nothing we use, but the file is not what
            we think it is), or the config has no sigma rows.
    """
    if not config.learn_sigma:
        raise CheckpointError("drop_sigma=True needs a learn_sigma model (2·C outputs)")
    c = config.in_channels
    weight, bias = state_dict["final_layer.linear.weight"], state_dict["final_layer.linear.bias"]
    if bool(weight[c:].any()) or bool(bias[c:].any()):
        raise CheckpointError(f"final_layer.linear rows {c}..{2 * c - 1} are not all zero (max abs "
                              f"{float(weight[c:].abs().max()):.3g}); refusing to drop them")
    out = dict(state_dict)
    out["final_layer.linear.weight"], out["final_layer.linear.bias"] = weight[:c], bias[:c]
    return out, SiTConfig.from_dict({**config.to_dict(), "learn_sigma": False})


def load_sit(path: str | Path, config: Optional[SiTConfig] = None, drop_sigma: bool = False) -> SiT:
    """Load a SiT from an official ``.pt`` or our ``sit.safetensors``, strictly, in eval mode.

    Args:
        path: file.
        config: required to match the file; ``None`` = from our metadata, or inferred from the ``.pt`` shapes.
        drop_sigma: drop the 2nd half of the output rows after checking they are zero (default keeps all,
            so outputs equal the reference's).
    Raises:
        CheckpointError: key/shape mismatch, wrapper prefixes, a config that differs from our file's.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        config_dict, state_dict, _ = read_svg(path, "sit")
        file_config = SiTConfig.from_dict(config_dict)
        if config is not None and config != file_config:
            raise CheckpointError(f"{path}: config in the file {file_config} differs from the one passed {config}")
        config = file_config
    else:
        state_dict = read_sit_state_dict(path)
        config = config or infer_sit_config(state_dict)
    if drop_sigma:
        state_dict, config = drop_sigma_rows(state_dict, config)
    with torch.device("meta"):  # no init work or memory for weights that are overwritten right away
        model = SiT(config)
    load_state_dict_strict(model, {k: v.float() for k, v in state_dict.items()}, str(path), assign=True)
    return model.eval()


def official_sit_state_dict(model: SiT) -> dict[str, torch.Tensor]:
    """The reference layout is our own key layout: the module's state dict (detached clones)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_official_sit(path: str | Path, model: SiT) -> None:
    """Write ``{"ema": state_dict}`` as the released ``train_svg.py`` does."""
    torch.save({"ema": official_sit_state_dict(model)}, path)


# ------------------------------------------------------------------------------------------------ autoencoder


def official_autoencoder_state_dict(ae: SVGAutoencoder) -> dict[str, torch.Tensor]:
    """Our autoencoder in the official ``state_dict`` layout (``encoder.`` DINOv3-native, ``extra_vit.``,
    ``decoder.``), plus an identity ``norm_vit`` LayerNorm of size residual_dim + legacy_embed_dim that the
    reference module registers (unused)."""
    own = ae.state_dict()
    enc = {k[len("encoder."):]: v for k, v in own.items() if k.startswith("encoder.")}
    out = {f"encoder.{k}": v for k, v in timm_to_dinov3(enc, ae.encoder).items()}
    out.update({k: v for k, v in own.items() if k.startswith(("extra_vit.", "decoder."))})
    width = ae.config.residual.out_dim + ae.config.legacy_embed_dim
    out["norm_vit.weight"], out["norm_vit.bias"] = torch.ones(width), torch.zeros(width)
    return {k: v.detach().clone() for k, v in out.items()}


def save_official_autoencoder(path: str | Path, ae: SVGAutoencoder, epoch: int = 0, global_step: int = 0) -> None:
    """Write a Lightning-style ``.ckpt`` (``state_dict``, ``epoch``, ``global_step``, ``pytorch-lightning_version``)."""
    torch.save({"state_dict": official_autoencoder_state_dict(ae), "epoch": epoch, "global_step": global_step,
                "pytorch-lightning_version": "2.1.0"}, path)


def _official_to_ours(state_dict: Mapping[str, torch.Tensor], ae: SVGAutoencoder, source: str) -> dict:
    _reject_wrapper_prefixes(state_dict, Path(source))
    known = ("encoder.", "extra_vit.", "decoder.")
    unknown = sorted(k for k in state_dict if not k.startswith(known + AE_UNUSED_PREFIXES))
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys {unknown} (known prefixes {list(known)}, skipped "
                              f"{list(AE_UNUSED_PREFIXES)})")
    enc = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    out = {f"encoder.{k}": v for k, v in dinov3_to_timm(enc, ae.encoder).items()}
    out.update({k: v for k, v in state_dict.items() if k.startswith(("extra_vit.", "decoder."))})
    return out


def load_autoencoder(path: str | Path, config: Optional[AutoencoderConfig] = None) -> SVGAutoencoder:
    """Load the autoencoder from an official Lightning ``.ckpt`` or our ``autoencoder.safetensors``, strictly.

    Args:
        path: file.
        config: for a ``.ckpt``, the architecture (default: the released ``svg-ae`` preset); for ours, ``None`` or
            equal to the file's config.
    Raises:
        CheckpointError: key/shape mismatch (skipping only :data:`AE_UNUSED_PREFIXES` of a .ckpt), bad layout.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        config_dict, state_dict, _ = read_svg(path, "autoencoder")
        file_config = AutoencoderConfig.from_dict(config_dict)
        if config is not None and config != file_config:
            raise CheckpointError(f"{path}: config in the file differs from the one passed")
        ae = SVGAutoencoder(file_config)
    else:
        ckpt = _torch_load(path)
        if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
            raise CheckpointError(f"{path}: expected a Lightning checkpoint with a 'state_dict' entry")
        ae = SVGAutoencoder(config or AE_PRESETS["svg-ae"])
        state_dict = _official_to_ours(ckpt["state_dict"], ae, str(path))
    load_state_dict_strict(ae, state_dict, str(path))
    return ae.eval()


def load_dinov3(path: str | Path, config: Optional[DinoConfig] = None) -> nn.Module:
    """DINOv3 from Meta's standalone ``.pth`` (bare, native names) or an autoencoder ``.ckpt`` (``encoder.*``).

    Raises:
        CheckpointError: key/shape mismatch.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    state_dict = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    model = build_dinov3(config or DinoConfig())
    load_state_dict_strict(model, dinov3_to_timm(state_dict, model), str(path))
    return model.eval()


# ------------------------------------------------------------------------------------------------ latent stats


def save_latent_stats(path: str | Path, norm: LatentNorm, extra: Optional[Mapping[str, str]] = None) -> None:
    """Write ``latent_stats.safetensors`` (tensors ``mean``, ``std`` (1, 1, C); config ``{"channels": C}``)."""
    save_svg(path, {"mean": norm.mean, "std": norm.std}, {"channels": norm.channels}, "latent_stats", extra)


def load_latent_stats(path: str | Path, channels: Optional[int] = None) -> LatentNorm:
    """Load latent statistics from the released ``.pt`` (``dinov3_sp_mean``/``dinov3_sp_std``) or ours.

    Args:
        channels: keep the first ``channels`` (the reference slices ``[:, :, :z_channels]``); ``None`` = all.
    Raises:
        CheckpointError: missing keys, or fewer channels than requested.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        _, tensors, _ = read_svg(path, "latent_stats")
        mean, std = tensors.get("mean"), tensors.get("std")
    else:
        data = _torch_load(path)
        mean, std = data.get("dinov3_sp_mean"), data.get("dinov3_sp_std")
    if mean is None or std is None:
        raise CheckpointError(f"{path}: needs mean and std tensors (dinov3_sp_mean/dinov3_sp_std or mean/std)")
    if channels is not None:
        if mean.shape[-1] < channels:
            raise CheckpointError(f"{path}: has {mean.shape[-1]} channels; requested channels={channels}")
        mean, std = mean[..., :channels], std[..., :channels]
    return LatentNorm(mean, std)

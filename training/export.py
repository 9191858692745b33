"""Write trained parts in the directory format the server loads (docs/ARCHITECTURE.md "Checkpoint format"):
``sit.safetensors``, ``autoencoder.safetensors``, ``latent_stats.safetensors``, each with its config in the
safetensors metadata. Only unwrapped modules are saved, so no key carries a ``module.``/``_orig_mod.`` prefix.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from svg.checkpoint import save_latent_stats, save_svg
from svg.latent import LatentNorm
from svg.pipeline import AE_FILE, SIT_FILE, STATS_FILE
from training.common import unwrap


def export_autoencoder(ae: nn.Module, out_dir: str | Path, extra: dict[str, str] | None = None) -> Path:
    """``out_dir/autoencoder.safetensors`` from an ``SVGAutoencoder`` (fp32)."""
    ae = unwrap(ae)
    path = Path(out_dir) / AE_FILE
    save_svg(path, ae.float(), ae.config, "autoencoder", extra)
    return path


def export_latent_stats(norm: LatentNorm, out_dir: str | Path, extra: dict[str, str] | None = None) -> Path:
    """``out_dir/latent_stats.safetensors`` with mean/std of layout (1, 1, C)."""
    path = Path(out_dir) / STATS_FILE
    save_latent_stats(path, norm, extra)
    return path


def export_sit(sit: nn.Module, out_dir: str | Path, extra: dict[str, str] | None = None) -> Path:
    """``out_dir/sit.safetensors`` from a SiT (pass the EMA model: it is what sampling loads)."""
    sit = unwrap(sit)
    path = Path(out_dir) / SIT_FILE
    save_svg(path, sit.float(), sit.config, "sit", extra)
    return path

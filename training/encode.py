"""Encode a dataset into latent tokens with a trained autoencoder: the token cache stage 2 reads with ``--latents``,
and optionally the per-channel latent statistics the server needs.

Run::

    python -m training.encode --data ../shared/data/mnist.npz --model-dir runs/tiny/model --out runs/tiny/latents.pt \
        --stats

writes ``runs/tiny/latents.pt`` (``{"tokens": (N, T, C) float32 raw tokens, "labels": (N,) int64}``, per-image
alignment, so each latent is what the server's encoder returns for that image) and, with ``--stats``,
``latent_stats.safetensors`` (mean/std of layout (1, 1, C) over all tokens) into ``--model-dir``. ``--data`` is an
MNIST ``.npz`` or an ImageFolder tree (``train/<class>/<image>``; its ``train`` split is encoded).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.cli import check_range, require_data, require_model_files, usage_errors


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary it prints (images, tokens, channels, seconds)."""
    p = argparse.ArgumentParser(prog="python -m training.encode",
                                description="Encode a dataset into latent tokens (stage 2's --latents cache)")
    p.add_argument("--data", required=True, help="mnist.npz or an ImageFolder root")
    p.add_argument("--model-dir", required=True, help="directory with autoencoder.safetensors")
    p.add_argument("--out", required=True, help="token cache file to write (.pt)")
    p.add_argument("--stats", action="store_true",
                   help="also write latent_stats.safetensors (per-channel mean/std) into --model-dir")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call")
    p.add_argument("--limit", type=int, default=0, help="encode only the first N images (0 = all)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes (ImageFolder data)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    a = p.parse_args(argv)
    with usage_errors(p):
        check_range("batch_size", a.batch_size, a.batch_size >= 1, ">= 1")
        check_range("workers", a.workers, a.workers >= 0, ">= 0")
        check_range("limit", a.limit, a.limit >= 0, ">= 0 (0 = all)")
    require_data(p, a.data)
    require_model_files(p, a.model_dir, ("autoencoder.safetensors",))

    import torch

    from svg.checkpoint import load_autoencoder
    from training.data import build_dataset
    from training.export import export_latent_stats
    from training.stage2 import encode_to_cache, latent_statistics

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    ae = load_autoencoder(Path(a.model_dir) / "autoencoder.safetensors").to(device).eval()
    dataset = build_dataset(a.data, ae.config.dino.img_size, "train")
    if a.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(a.limit, len(dataset))))
    cache = encode_to_cache(ae, dataset, Path(a.out), device=device, batch=a.batch_size, workers=a.workers)
    tokens = cache["tokens"]
    summary = {"images": int(tokens.shape[0]), "tokens": int(tokens.shape[0] * tokens.shape[1]),
               "channels": int(tokens.shape[2]), "out": str(a.out)}
    if a.stats:
        norm = latent_statistics(tokens)
        summary["stats"] = str(export_latent_stats(norm, a.model_dir))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

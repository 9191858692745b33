"""Train the embedded demo model end to end on MNIST and write ``models/demo`` with its model card.

Stages, each resumable and skipped once finished (its result JSON exists under ``--runs``):

1. ``ssl``    DINO self-distillation of the demo's DINOv3-family encoder (no labels), then frozen; k-NN probe of
              the pretrained encoder vs the same architecture at random init.
2. ``stage1`` autoencoder: residual encoder + decoder on the frozen encoder; exports ``autoencoder.safetensors``.
3. ``stats``  per-channel latent mean/std over the training set (layout (1, 1, C)); caches the latent tokens;
              exports ``latent_stats.safetensors``.
4. ``stage2`` flow-matching SiT on the cached tokens; exports the EMA as ``sit.safetensors``.
5. ``eval``   class-conditional accuracy of samples at 25/10/5 Euler steps and reconstruction PSNR.

Then ``MODEL_CARD.md`` is written from the stage results. Run:
``python -m training.demo --data ../shared/data/mnist.npz --out models/demo`` (``--runs runs/demo`` holds the
checkpoints and logs; kill it at any time and run the same command again to continue).

``--small`` trains a tiny model end to end in about a minute on a CPU instead (the ``tiny`` presets, a random frozen
encoder, no SSL and no evaluation): stage 1, ``python -m training.encode`` (token cache + latent statistics of the
first :data:`SMALL` ``images``), stage 2; the server loads the result (``python -m server --model-dir OUT``). It is
for checking the whole path, not for good samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from training.cli import require_data
from training.common import setup_logging

log = logging.getLogger("training.demo")

# The demo recipe. Deviations from the reference hyperparameters (§8), all for a ~90-minute 2-core CPU budget:
# higher learning rates, no GAN in stage 1, a 0.999 EMA (0.9999 averages over ~10k steps, more than the run has).
DEMO = {
    "ssl": {"steps": 600, "batch_size": 32, "lr": 5e-4},
    "stage1": {"steps": 1200, "batch_size": 32, "lr": 4e-4, "disc_start": -1},
    "stage2": {"steps": 8000, "batch_size": 64, "lr": 1e-3, "warmup": 200, "ema_decay": 0.999, "clip_grad": 1.0},
    "eval": {"guidance_scale": 3.0, "shift": 0.4, "per_class": 100, "steps": [25, 10, 5]},
}
AE_PRESET, SIT_PRESET = "demo", "demo"

# --small: the whole path in about a minute on 2 CPU cores (the tiny presets; plumbing, not sample quality).
SMALL = {
    "preset": "tiny",
    "stage1": {"steps": 20, "batch_size": 8, "lr": 1e-3, "disc_start": -1, "psnr_images": 256},
    "images": 1000,  # encoded into the token cache and the latent statistics
    "stage2": {"steps": 100, "batch_size": 16, "lr": 1e-3, "warmup": 10, "ema_decay": 0.99},
}
# Defaults that do not depend on the directory the command is started from.
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist.npz"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_ssl(data: str, runs: Path) -> dict:
    """Train the encoder (skipped when ``encoder.pt`` exists)."""
    from training.ssl import build_demo_encoder, train_ssl

    out = runs / "ssl"
    done = _read(out / "ssl_result.json")
    if done and (out / "encoder.pt").is_file():
        return done
    cfg = DEMO["ssl"]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    train_ssl(build_demo_encoder(), data, out, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"])
    result = {**cfg, "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "ssl_result.json").write_text(json.dumps(result, indent=2))
    return result


def run_probe(data: str, runs: Path) -> dict:
    """k-NN probe of the SSL encoder vs the same architecture at random init (seed 0)."""
    from training.ssl import build_demo_encoder, evaluate_knn

    path = runs / "ssl" / "ssl_result.json"
    result = _read(path)
    if "knn_pretrained" in result:
        return result
    torch.manual_seed(0)
    random_init = build_demo_encoder()
    encoder = build_demo_encoder()
    encoder.load_state_dict(torch.load(runs / "ssl" / "encoder.pt", map_location="cpu", weights_only=True))
    t0 = time.perf_counter()
    result["knn_pretrained"] = evaluate_knn(encoder, data)
    result["knn_random_init"] = evaluate_knn(random_init, data)
    result["probe_wall_s"] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(result, indent=2))
    return result


def run_stage1(data: str, runs: Path, model_dir: Path) -> dict:
    from training import stage1

    out = runs / "stage1"
    done = _read(out / "stage1_result.json")
    if done and (model_dir / "autoencoder.safetensors").is_file():
        return done
    cfg = DEMO["stage1"]
    stage1.main(["--data", data, "--out", str(out), "--preset", AE_PRESET, "--encoder",
                 str(runs / "ssl" / "encoder.pt"), "--steps", str(cfg["steps"]), "--batch-size",
                 str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--disc-start", str(cfg["disc_start"]),
                 "--export", str(model_dir)])
    return _read(out / "stage1_result.json")


def run_stats(data: str, runs: Path, model_dir: Path) -> dict:
    from svg.checkpoint import load_autoencoder
    from training.data import load_mnist
    from training.export import export_latent_stats
    from training.stage2 import encode_dataset, latent_statistics

    done = _read(runs / "stats_result.json")
    cache = runs / "latents.pt"
    if done and cache.is_file() and (model_dir / "latent_stats.safetensors").is_file():
        return done
    t0 = time.perf_counter()
    ae = load_autoencoder(model_dir / "autoencoder.safetensors").eval()
    images, labels = load_mnist(data, "train").tensors
    tokens = encode_dataset(ae, images)  # (N, T, C) float32, per-image alignment
    torch.save({"tokens": tokens, "labels": labels}, cache)
    norm = latent_statistics(tokens)
    export_latent_stats(norm, model_dir)
    result = {"images": int(images.shape[0]), "tokens": int(tokens.shape[0] * tokens.shape[1]),
              "channels": int(tokens.shape[2]), "wall_s": round(time.perf_counter() - t0, 1),
              "mean_avg": round(norm.mean.mean().item(), 5), "std_avg": round(norm.std.mean().item(), 5)}
    (runs / "stats_result.json").write_text(json.dumps(result, indent=2))
    return result


def run_stage2(data: str, runs: Path, model_dir: Path) -> dict:
    from training import stage2

    out = runs / "stage2"
    done = _read(out / "stage2_result.json")
    if done and (model_dir / "sit.safetensors").is_file():
        return done
    cfg = DEMO["stage2"]
    stage2.main(["--data", data, "--model-dir", str(model_dir), "--preset", SIT_PRESET, "--out", str(out),
                 "--latents", str(runs / "latents.pt"), "--steps", str(cfg["steps"]), "--batch-size",
                 str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--warmup", str(cfg["warmup"]),
                 "--ema-decay", str(cfg["ema_decay"]), "--clip-grad", str(cfg["clip_grad"]), "--log-every", "100",
                 "--ckpt-every", "250"])
    return _read(out / "stage2_result.json")


def run_eval(data: str, model_dir: Path) -> dict:
    from training.evaluate import evaluate

    done = _read(model_dir / "eval.json")
    if done:
        return done
    cfg = DEMO["eval"]
    t0 = time.perf_counter()
    result = evaluate(model_dir, data, tuple(cfg["steps"]), cfg["per_class"], cfg["guidance_scale"], cfg["shift"])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    (model_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def run_small(data: str, runs: Path, model_dir: Path) -> dict:
    """``--small``: stage 1 (tiny preset, random frozen encoder) -> token cache + statistics -> stage 2; no card."""
    from training import encode, stage1, stage2

    t0 = time.perf_counter()
    s1, s2, preset = SMALL["stage1"], SMALL["stage2"], SMALL["preset"]
    stage1.main(["--data", data, "--out", str(runs / "stage1"), "--preset", preset, "--steps", str(s1["steps"]),
                 "--batch-size", str(s1["batch_size"]), "--lr", str(s1["lr"]), "--disc-start", str(s1["disc_start"]),
                 "--psnr-images", str(s1["psnr_images"]), "--log-every", "10", "--ckpt-every", str(s1["steps"]),
                 "--export", str(model_dir)])
    encode.main(["--data", data, "--model-dir", str(model_dir), "--out", str(runs / "latents.pt"), "--stats",
                 "--limit", str(SMALL["images"])])
    stage2.main(["--data", data, "--model-dir", str(model_dir), "--preset", preset, "--out", str(runs / "stage2"),
                 "--latents", str(runs / "latents.pt"), "--steps", str(s2["steps"]), "--batch-size",
                 str(s2["batch_size"]), "--lr", str(s2["lr"]), "--warmup", str(s2["warmup"]), "--ema-decay",
                 str(s2["ema_decay"]), "--log-every", "50", "--ckpt-every", str(s2["steps"])])
    result = {"mode": "small", **SMALL, "stage1_result": _read(runs / "stage1" / "stage1_result.json"),
              "stage2_result": _read(runs / "stage2" / "stage2_result.json"),
              "wall_s": round(time.perf_counter() - t0, 1)}
    (runs / "small_result.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.demo",
        description="Train the demo SVG on MNIST end to end (SSL encoder, stage 1 autoencoder, latent statistics, "
                    "stage 2 diffusion, evaluation) and write a model directory the server loads, with its model "
                    "card. Resumable: run the same command again after a kill.",
        epilog="Runtime: the full demo takes about 90 minutes on 2 CPU cores (much less on a GPU); --small about a "
               "minute. Then serve it: python -m server --model-dir OUT. Details: docs/training.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="MNIST .npz (train_images/train_labels/test_images/test_labels arrays)")
    p.add_argument("--out", default=None,
                   help="model directory to write (default: models/demo in the repository; runs/tiny-model with "
                        "--small)")
    p.add_argument("--runs", default=None,
                   help="checkpoints and logs (default: runs/demo in the repository; runs/tiny with --small)")
    p.add_argument("--small", action="store_true",
                   help="train a tiny model end to end in about a minute (tiny presets, no SSL, no evaluation): "
                        "checks the whole path, not for good samples")
    a = p.parse_args(argv)
    require_data(p, a.data)
    if a.small:
        runs = Path(a.runs) if a.runs else REPO / "runs" / "tiny"
        model_dir = Path(a.out) if a.out else REPO / "runs" / "tiny-model"
        runs.mkdir(parents=True, exist_ok=True)
        setup_logging(runs / "demo.log")
        result = run_small(a.data, runs, model_dir)
        log.info("small demo done in %.0f s: serve it with  python -m server --model-dir %s", result["wall_s"],
                 model_dir)
        return
    runs = Path(a.runs) if a.runs else REPO / "runs" / "demo"
    model_dir = Path(a.out) if a.out else REPO / "models" / "demo"
    runs.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(runs / "demo.log")
    results = {"ssl": run_ssl(a.data, runs)}
    setup_logging(runs / "demo.log")  # the stages configure their own log files
    results["stage1"] = run_stage1(a.data, runs, model_dir)
    results["stats"] = run_stats(a.data, runs, model_dir)
    results["stage2"] = run_stage2(a.data, runs, model_dir)
    setup_logging(runs / "demo.log")
    results["ssl"] = run_probe(a.data, runs)
    results["eval"] = run_eval(a.data, model_dir)
    from training.model_card import write_model_card

    write_model_card(model_dir, results, DEMO)
    log.info("demo done: %s", json.dumps(results))


if __name__ == "__main__":
    main()

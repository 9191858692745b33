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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.demo",
                                description="Train the demo SVG on MNIST and write its model card")
    p.add_argument("--data", default="../shared/data/mnist.npz")
    p.add_argument("--out", default="models/demo")
    p.add_argument("--runs", default="runs/demo")
    a = p.parse_args(argv)
    require_data(p, a.data)
    runs, model_dir = Path(a.runs), Path(a.out)
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

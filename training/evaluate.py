"""Evaluate a trained SVG model directory: class-conditional accuracy of generated samples and autoencoder
reconstruction PSNR, judged by an MNIST classifier trained in-tree for evaluation only.

* Classifier: a small CNN (2 conv blocks + MLP) trained on the MNIST training set, cached at
  ``runs/eval/mnist_classifier.pt`` with its test accuracy; never part of the served model.
* Generation accuracy: ``--per-class`` samples of each digit with Euler at each of ``--steps`` (25, 10, 5 by
  default), the guidance scale/shift given; accuracy = fraction the classifier labels as the requested class.
* Reconstruction: mean PSNR (peak-to-peak 2 on [-1, 1]) of decode(encode(x)) over the test set, per-image
  alignment (what the server does).

Run: ``python -m training.evaluate --model-dir models/demo --data ../shared/data/mnist.npz``; writes
``<model-dir>/eval.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.cli import check_range, require_data, require_model_files, usage_errors
from training.common import Batches, setup_logging
from training.data import load_mnist

log = logging.getLogger("training.evaluate")

DEFAULT_CLASSIFIER = Path("runs/eval/mnist_classifier.pt")


class MNISTClassifier(nn.Module):
    """Evaluation-only CNN: ``forward(x (B, 3, 32, 32) in [-1, 1]) -> (B, 10)`` logits (channels averaged)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted labels (N,) int64 for images (N, 3, 32, 32) in [-1, 1]."""
    model.eval()
    return torch.cat([model(x).argmax(1) for x in images.split(batch)])


def train_classifier(data: str | Path, epochs: int = 1, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0) -> tuple[MNISTClassifier, float]:
    """Train the evaluation classifier with light augmentation (random shifts of ±2 px); returns it with its
    MNIST test accuracy in [0, 1]."""
    torch.manual_seed(seed)
    train, test = load_mnist(data, "train"), load_mnist(data, "test")
    model = MNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = Batches(train, batch_size, seed=seed)
    steps = epochs * batches.batches_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 3, total_steps=steps)
    it = batches.iterate()
    model.train()
    for _ in range(steps):
        x, y = next(it)
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    acc = (classify(model, test.tensors[0]) == test.tensors[1]).float().mean().item()
    return model.eval(), acc


def load_or_train_classifier(data: str | Path, path: str | Path = DEFAULT_CLASSIFIER) -> tuple[MNISTClassifier, float]:
    """The cached classifier at ``path`` (trained and written on first use) and its test accuracy."""
    path = Path(path)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = MNISTClassifier()
        model.load_state_dict(state["model"])
        return model.eval(), float(state["test_accuracy"])
    t0 = time.perf_counter()
    model, acc = train_classifier(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "test_accuracy": acc}, path)
    log.info("classifier trained in %.0f s: test accuracy %.4f", time.perf_counter() - t0, acc)
    return model, acc


@torch.no_grad()
def generate(pipe, labels: torch.Tensor, steps: int, guidance_scale: float, shift: float, seed: int = 0,
             batch: int = 250) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] for ``labels (N,)`` through ``svg.sampling.sample`` (Euler) and the decoder.
    Noise for image i is ``initial_noise(seed, i, ...)``, so results do not depend on ``batch``."""
    from svg.sampling import Guidance, GuidanceMode, initial_noise, sample

    cfg = pipe.sit.config
    guidance = (Guidance(GuidanceMode.CONSTANT, guidance_scale) if guidance_scale != 1.0 else Guidance())
    shape = (cfg.num_tokens, cfg.in_channels)
    out = []
    pipe.sit.eval()
    for start in range(0, labels.shape[0], batch):
        y = labels[start : start + batch]
        noise = torch.stack([initial_noise(seed, start + i, shape) for i in range(y.shape[0])])
        result = sample(pipe.sit, noise, y, steps=steps, guidance=guidance, shift=shift,
                        num_classes=cfg.num_classes)
        out.append(pipe.decode_tokens(result.latents))
    return torch.cat(out)


def evaluate(model_dir: str | Path, data: str | Path, steps: tuple[int, ...] = (25, 10, 5), per_class: int = 100,
             guidance_scale: float = 2.0, shift: float = 0.4, psnr_images: int = 10000, seed: int = 0,
             classifier_path: str | Path = DEFAULT_CLASSIFIER) -> dict:
    """All metrics of one model directory as a JSON-able dict (see module docstring)."""
    from svg.pipeline import SVGPipeline
    from training.stage1 import reconstruction_psnr

    pipe = SVGPipeline.from_dir(model_dir)
    classifier, clf_acc = load_or_train_classifier(data, classifier_path)
    classes = pipe.sit.config.num_classes
    labels = torch.arange(classes).repeat_interleave(per_class)
    result = {"classifier_test_accuracy": round(clf_acc, 4), "samples_per_class": per_class,
              "guidance_scale": guidance_scale, "shift": shift, "solver": "euler", "accuracy": {},
              "seconds": {}}
    for n in steps:
        t0 = time.perf_counter()
        images = generate(pipe, labels, n, guidance_scale, shift, seed)
        acc = (classify(classifier, images) == labels).float().mean().item()
        result["accuracy"][str(n)] = round(acc, 4)
        result["seconds"][str(n)] = round(time.perf_counter() - t0, 1)
        log.info("steps %d: class-conditional accuracy %.4f (%.0f s)", n, acc, time.perf_counter() - t0)
    test = load_mnist(data, "test").tensors[0][:psnr_images]
    result["reconstruction_psnr_db"] = round(reconstruction_psnr(pipe.autoencoder, test), 2)
    result["psnr_images"] = int(test.shape[0])
    return result


def _validate(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Every argument checked before the model loads or the classifier trains (exit 2 with one line)."""
    import math

    from svg.sampling import MAX_STEPS, Guidance, GuidanceMode

    with usage_errors(p):
        for n in a.steps:
            check_range("steps", n, 1 <= n <= MAX_STEPS, f"an integer in [1, {MAX_STEPS}]")
        check_range("per_class", a.per_class, a.per_class >= 1, ">= 1")
        check_range("psnr_images", a.psnr_images, a.psnr_images >= 1, ">= 1")
        check_range("shift", a.shift, math.isfinite(a.shift), "a finite number (<= 0 means no shift)")
        check_range("seed", a.seed, a.seed >= 0, ">= 0")
    with usage_errors(p, "--guidance-scale"):
        Guidance(GuidanceMode.CONSTANT, a.guidance_scale)
    require_data(p, a.data)
    from svg.pipeline import AE_FILE, SIT_FILE, STATS_FILE

    require_model_files(p, a.model_dir, (SIT_FILE, AE_FILE, STATS_FILE))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.evaluate",
                                description="Evaluate an SVG model directory on MNIST")
    p.add_argument("--model-dir", default="models/demo")
    p.add_argument("--data", required=True, help="mnist.npz")
    p.add_argument("--steps", type=int, nargs="+", default=[25, 10, 5])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--shift", type=float, default=0.4)
    p.add_argument("--psnr-images", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    p.add_argument("--out", default=None, help="JSON output (default <model-dir>/eval.json)")
    a = p.parse_args(argv)
    _validate(p, a)
    setup_logging()
    result = evaluate(a.model_dir, a.data, tuple(a.steps), a.per_class, a.guidance_scale, a.shift,
                      a.psnr_images, a.seed, a.classifier)
    out = Path(a.out) if a.out else Path(a.model_dir) / "eval.json"
    out.write_text(json.dumps(result, indent=2))
    log.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()

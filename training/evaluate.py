"""Evaluate a trained SVG model directory: class-conditional accuracy of generated samples and autoencoder
reconstruction PSNR, judged by an MNIST classifier trained in-tree for evaluation only.

* Classifier: a small CNN (2 conv blocks + MLP) trained on the MNIST training set, cached at
  ``runs/eval/mnist_classifier.pt`` with its test accuracy; never part of the served model.
* Generation accuracy: ``--per-class`` samples of each digit with Euler at each of ``--steps`` (25, 10, 5 by
  default), the guidance scale/shift given; accuracy = fraction the classifier labels as the requested class.
* Reconstruction: mean PSNR (peak-to-peak 2 on [-1, 1]) of decode(encode(x)) over the test set, per-image
  alignment (what the server does).

Distribution metrics (``--sweep``), all on the classifier's penultimate features (the 128-d ReLU layer before
the logits), because an ImageNet Inception network cannot be downloaded here and would not fit 32×32 digits:

* MNIST Fréchet distance (FD): the FID formula (Heusel et al. 2017, Eq. 2) between Gaussians fitted to the
  generated and to a reference set of real test digits, always reported next to its **floor**, the FD between
  two disjoint real sets of the same size and class balance (finite-sample bias makes the floor > 0).
* Within-class diversity ratio: the mean pairwise feature distance within each class, averaged over classes,
  generated over real (1 = as varied as real digits; small = samples collapse onto prototypes).
* Noise: accuracy ± its binomial standard error; FD ± the standard deviation over bootstrap resamples of the
  generated set; the floor ± its standard deviation over disjoint real splits.

Run: ``python -m training.evaluate --model-dir models/demo --data ../shared/data/mnist.npz``; writes
``<model-dir>/eval.json`` unless ``--out`` says otherwise. The guidance × steps sweep:
``python -m training.evaluate --model-dir models/demo --data ../shared/data/mnist.npz --sweep
--csv models/demo/sweep.csv --plot models/demo/sweep.png`` (500 samples per setting, seed 0).
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


@torch.no_grad()
def features(model: MNISTClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Penultimate features (N, 128) float64 of images (N, 3, 32, 32) in [-1, 1]: the ReLU output before the
    dropout and the logit layer, the classifier's analogue of FID's Inception pool features."""
    model.eval()
    trunk = model.net[:-2]  # everything up to and including the last ReLU
    return torch.cat([trunk(x.mean(1, keepdim=True)) for x in images.split(batch)]).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, D)`` and ``b (M, D)``:
    ``|mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½)`` (Heusel et al. 2017, Eq. 2; the symmetric form of
    the trace term avoids a non-symmetric matrix square root). Unbiased covariances, float64.

    Raises:
        ValueError: not 2-D, different feature sizes, or fewer than 2 rows in a set.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"feature sets must be (N>=2, D) with the same D; got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(sa)
    root_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp(min=0).sqrt().sum()
    return float(mu @ mu + sa.trace() + sb.trace() - 2 * cross)


def within_class_spread(feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct pairs of ``feats (N, D)`` that share a label, averaged over the
    labels present (each class weighs the same). Classes with fewer than 2 members are skipped.

    Raises:
        ValueError: no class has 2 members.
    """
    spreads = []
    for c in labels.unique():
        f = feats[labels == c].double()
        n = f.shape[0]
        if n >= 2:
            spreads.append(torch.cdist(f, f).sum().item() / (n * (n - 1)))
    if not spreads:
        raise ValueError("within_class_spread needs at least one class with 2 samples")
    return sum(spreads) / len(spreads)


def diversity_ratio(gen: torch.Tensor, gen_labels: torch.Tensor, real: torch.Tensor,
                    real_labels: torch.Tensor) -> float:
    """Within-class diversity of generated features over that of real features (:func:`within_class_spread`);
    1 means as varied as real digits."""
    return within_class_spread(gen, gen_labels) / within_class_spread(real, real_labels)


def balanced_indices(labels: torch.Tensor, per_class: int, gen: torch.Generator,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``per_class`` random indices of each label (sorted by class), none from ``exclude``.

    Raises:
        ValueError: a class has fewer than ``per_class`` candidates.
    """
    taken = torch.zeros(labels.shape[0], dtype=torch.bool)
    if exclude is not None:
        taken[exclude] = True
    out = []
    for c in labels.unique().tolist():
        idx = torch.nonzero((labels == c) & ~taken).flatten()
        if idx.numel() < per_class:
            raise ValueError(f"per_class={per_class} out of range; class {c} has {idx.numel()} images left")
        out.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.cat(out)


class RealReference:
    """Real MNIST test digits the generated sets are compared with, and the real-vs-real floor of each metric.

    ``per_class`` images of each digit form the reference set (seed ``seed``); ``floor_splits`` further disjoint
    balanced sets of the same size give the FD floor (mean and std) and the diversity of real digits.
    """

    def __init__(self, classifier: MNISTClassifier, data: str | Path, per_class: int = 50, seed: int = 0,
                 floor_splits: int = 4):
        images, labels = load_mnist(data, "test").tensors
        gen = torch.Generator().manual_seed(seed)
        ref = balanced_indices(labels, per_class, gen)
        used = ref
        self.per_class = per_class
        self.features, self.labels = features(classifier, images[ref]), labels[ref]
        floors = []
        for _ in range(floor_splits):
            other = balanced_indices(labels, per_class, gen, exclude=used)
            used = torch.cat([used, other])
            floors.append(frechet_distance(features(classifier, images[other]), self.features))
        floors_t = torch.tensor(floors)
        self.floor = floors_t.mean().item()
        self.floor_std = floors_t.std().item() if floor_splits > 1 else 0.0


def sample_metrics(classifier: MNISTClassifier, ref: RealReference, images: torch.Tensor, labels: torch.Tensor,
                   bootstrap: int = 20, seed: int = 0) -> dict[str, float]:
    """Accuracy, FD and diversity of generated ``images (N, 3, 32, 32)`` for requested ``labels (N,)`` against
    ``ref``, with their noise: ``accuracy_se`` (binomial), ``fd_std`` (bootstrap over the generated set), and
    ``fd_ratio`` = FD / the real floor."""
    f = features(classifier, images)
    with torch.no_grad():
        pred = classifier.net[-1](f.float()).argmax(1)
    acc = (pred == labels).double().mean().item()
    fd = frechet_distance(f, ref.features)
    gen = torch.Generator().manual_seed(seed)
    boots = [frechet_distance(f[torch.randint(0, f.shape[0], (f.shape[0],), generator=gen)], ref.features)
             for _ in range(bootstrap)]
    return {"accuracy": acc, "accuracy_se": (acc * (1 - acc) / labels.shape[0]) ** 0.5, "fd": fd,
            "fd_std": torch.tensor(boots).std().item() if bootstrap > 1 else 0.0, "fd_floor": ref.floor,
            "fd_floor_std": ref.floor_std, "fd_ratio": fd / ref.floor,
            "diversity": diversity_ratio(f, labels, ref.features, ref.labels)}


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
def sample_images(sit: nn.Module, decode, labels: torch.Tensor, steps: int, guidance_scale: float, shift: float,
                  seed: int = 0, batch: int = 250) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] for ``labels (N,)``: ``svg.sampling.sample`` (Euler, constant guidance;
    scale 1 = no guidance) with ``sit``, then ``decode(tokens (B, T, C)) -> images``. Noise for image i is
    ``initial_noise(seed, i, ...)``, so results do not depend on ``batch``."""
    from svg.sampling import Guidance, GuidanceMode, initial_noise, sample

    cfg = sit.config
    guidance = (Guidance(GuidanceMode.CONSTANT, guidance_scale) if guidance_scale != 1.0 else Guidance())
    shape = (cfg.num_tokens, cfg.in_channels)
    out = []
    sit.eval()
    for start in range(0, labels.shape[0], batch):
        y = labels[start : start + batch]
        noise = torch.stack([initial_noise(seed, start + i, shape) for i in range(y.shape[0])])
        result = sample(sit, noise, y, steps=steps, guidance=guidance, shift=shift, num_classes=cfg.num_classes)
        out.append(decode(result.latents))
    return torch.cat(out)


def generate(pipe, labels: torch.Tensor, steps: int, guidance_scale: float, shift: float, seed: int = 0,
             batch: int = 250) -> torch.Tensor:
    """:func:`sample_images` with an ``SVGPipeline``'s SiT and decoder."""
    return sample_images(pipe.sit, pipe.decode_tokens, labels, steps, guidance_scale, shift, seed, batch)


SWEEP_GUIDANCE = (1.0, 1.5, 2.0, 4.0)
SWEEP_STEPS = (5, 25)
SWEEP_FIELDS = ("guidance_scale", "steps", "samples", "accuracy", "accuracy_se", "fd", "fd_std", "fd_floor",
                "fd_floor_std", "fd_ratio", "diversity", "seconds")


def sweep(sit: nn.Module, decode, classifier: MNISTClassifier, ref: RealReference,
          guidance: tuple[float, ...] = SWEEP_GUIDANCE, steps: tuple[int, ...] = SWEEP_STEPS, shift: float = 0.4,
          seed: int = 0) -> list[dict]:
    """One row of :func:`sample_metrics` per (guidance scale, steps), ``ref.per_class`` samples per digit with
    the same noise (``seed``) in every row; rows carry the ``SWEEP_FIELDS``."""
    labels = torch.arange(sit.config.num_classes).repeat_interleave(ref.per_class)
    rows = []
    for w in guidance:
        for n in steps:
            t0 = time.perf_counter()
            images = sample_images(sit, decode, labels, n, w, shift, seed)
            row = {"guidance_scale": w, "steps": n, "samples": int(labels.shape[0]),
                   **sample_metrics(classifier, ref, images, labels, seed=seed),
                   "seconds": round(time.perf_counter() - t0, 1)}
            log.info("guidance %.1f, %d steps: accuracy %.3f, FD %.1f (%.1f× floor), diversity %.2f", w, n,
                     row["accuracy"], row["fd"], row["fd_ratio"], row["diversity"])
            rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path, fields: tuple[str, ...] | None = None) -> None:
    """Rows (dicts) to a CSV with a header; floats rounded to 4 significant decimals."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = fields or tuple(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


def plot_sweep(rows: list[dict], path: str | Path, title: str) -> None:
    """Accuracy, FD / floor and diversity against the guidance scale, one line per step count (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for n in sorted({r["steps"] for r in rows}):
        rs = [r for r in rows if r["steps"] == n]
        w = [r["guidance_scale"] for r in rs]
        axes[0].errorbar(w, [100 * r["accuracy"] for r in rs], [100 * r["accuracy_se"] for r in rs],
                         marker="o", capsize=3, label=f"{n} steps")
        axes[1].errorbar(w, [r["fd_ratio"] for r in rs], [r["fd_std"] / r["fd_floor"] for r in rs], marker="o",
                         capsize=3, label=f"{n} steps")
        axes[2].plot(w, [r["diversity"] for r in rs], marker="o", label=f"{n} steps")
    axes[0].set_ylabel("class-conditional accuracy (%)")
    axes[1].set_ylabel("FD / real-vs-real floor")
    axes[1].set_yscale("log")
    axes[1].axhline(1, color="grey", ls=":", label="real floor")
    axes[2].set_ylabel("within-class diversity (gen / real)")
    axes[2].axhline(1, color="grey", ls=":")
    for ax in axes:
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        for n in a.sweep_steps:
            check_range("sweep_steps", n, 1 <= n <= MAX_STEPS, f"an integer in [1, {MAX_STEPS}]")
        if a.sweep:
            # the real reference and its floor splits take 5 disjoint balanced sets of the test set
            check_range("per_class", a.per_class, a.per_class <= 170, "<= 170 with --sweep")
    with usage_errors(p, "--guidance-scale"):
        Guidance(GuidanceMode.CONSTANT, a.guidance_scale)
        for w in a.sweep_guidance:
            if w != 1.0:
                Guidance(GuidanceMode.CONSTANT, w)
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
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is faster on an oversubscribed machine; default: torch's choice)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: accuracy, FD (with its real floor) and diversity over guidance × steps")
    p.add_argument("--sweep-guidance", type=float, nargs="+", default=list(SWEEP_GUIDANCE))
    p.add_argument("--sweep-steps", type=int, nargs="+", default=list(SWEEP_STEPS))
    p.add_argument("--csv", default=None, help="sweep CSV (default <model-dir>/sweep.csv)")
    p.add_argument("--plot", default=None, help="sweep PNG (default next to the CSV)")
    a = p.parse_args(argv)
    _validate(p, a)
    setup_logging()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.sweep:
        from svg.pipeline import SVGPipeline

        pipe = SVGPipeline.from_dir(a.model_dir)
        classifier, _ = load_or_train_classifier(a.data, a.classifier)
        ref = RealReference(classifier, a.data, a.per_class, a.seed)
        log.info("real-vs-real FD floor %.2f ± %.2f (%d per class)", ref.floor, ref.floor_std, a.per_class)
        rows = sweep(pipe.sit, pipe.decode_tokens, classifier, ref, tuple(a.sweep_guidance),
                     tuple(a.sweep_steps), a.shift, a.seed)
        csv_path = Path(a.csv) if a.csv else Path(a.model_dir) / "sweep.csv"
        write_csv(rows, csv_path, SWEEP_FIELDS)
        plot_sweep(rows, Path(a.plot) if a.plot else csv_path.with_suffix(".png"),
                   f"{a.model_dir}: {ref.per_class * 10} samples per point, seed {a.seed}, shift {a.shift}")
        return
    result = evaluate(a.model_dir, a.data, tuple(a.steps), a.per_class, a.guidance_scale, a.shift,
                      a.psnr_images, a.seed, a.classifier)
    out = Path(a.out) if a.out else Path(a.model_dir) / "eval.json"
    out.write_text(json.dumps(result, indent=2))
    log.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()

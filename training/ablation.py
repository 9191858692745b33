"""The paper's claim in miniature: does the SVG latent make the same SiT train faster and sample better in few
steps than weaker latents or pixels? (SVG paper, Tables 2 and 4 and Figure 4b, at MNIST scale.)

Four variants, each trained with the same SiT size (the ``demo`` preset; only the input/output projection
follows the token width), the same stage-2 budget, schedule and seed:

* ``svg``            the SVG latent: the SSL-pretrained frozen encoder + the residual encoder aligned to it (Eq. 6);
* ``random_encoder`` the same autoencoder recipe with a randomly initialised frozen encoder;
* ``no_align``       the SVG latent without distribution alignment (raw residual channels);
* ``pixels``         the grey image patchified 4×4: the same 64 tokens, 16 channels, no autoencoder.

The three autoencoders are trained here with one stage-1 recipe (the demo's: L1 + perceptual loss, residual
masking 0.1, no GAN) and the same budget. The perceptual net is the SSL encoder for all three, so only the frozen
encoder under test differs. Latents are per-channel normalised like the demo's (``svg.latent.LatentNorm``).

Stage 2 runs round-robin in segments (all variants to ``eval_at[0]`` steps, then all to ``eval_at[1]`` ...), so a
run stopped early still compares the four at equal steps. After each segment the EMA model is evaluated with
``training.evaluate.sweep`` (accuracy, MNIST Fréchet distance with its real floor, diversity) at 5 and 25 Euler
steps, without guidance and at ``guidance``; rows go to ``results.jsonl`` and the CSV and plot are rewritten.

Everything is resumable: kill it and run the same command again (finished stages are skipped, SiT segments
resume from ``<out>/<variant>/stage2_last.pt``). Default budget ≈ 60 min on 2 free CPU cores:

``python -m training.ablation --data ../shared/data/mnist.npz --ssl-encoder models/demo/autoencoder.safetensors
--out runs/ablation --csv benchmarks/ablation.csv``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from training.cli import check_range, require_data, require_file, usage_errors
from training.common import Batches, Progress, seed_everything, setup_logging

log = logging.getLogger("training.ablation")

VARIANTS = ("svg", "random_encoder", "no_align", "pixels")
LATENT_VARIANTS = {"svg": ("ssl", True), "random_encoder": ("random", True), "no_align": ("ssl", False)}
PIXEL_PATCH = 4
CSV_FIELDS = ("variant", "train_steps", "guidance_scale", "steps", "samples", "accuracy", "accuracy_se", "fd",
              "fd_std", "fd_floor", "fd_floor_std", "fd_ratio", "diversity", "train_wall_s", "recon_psnr_db")


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """Budget of one ablation run (defaults: ≈ 60 min on 2 free CPU cores)."""

    stage1_steps: int = 300
    stage1_batch: int = 32
    stage1_lr: float = 4e-4
    latent_images: int = 20000  # training images encoded once per variant
    psnr_images: int = 2000  # test images for each autoencoder's reconstruction PSNR
    eval_at: tuple[int, ...] = (250, 500, 1000)  # stage-2 steps; the last is the budget
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.99  # horizon ~100 steps: the EMA must forget its init by the first evaluation
    per_class: int = 20
    guidance: float = 1.5
    sample_steps: tuple[int, ...] = (5, 25)
    shift: float = 0.4
    seed: int = 0
    variants: tuple[str, ...] = VARIANTS

    def __post_init__(self) -> None:
        for name in ("stage1_steps", "stage1_batch", "latent_images", "psnr_images", "batch_size", "per_class"):
            check_range(name, getattr(self, name), getattr(self, name) >= 1, ">= 1")
        check_range("eval_at", list(self.eval_at), len(self.eval_at) >= 1 and all(
            a < b for a, b in zip((0,) + self.eval_at, self.eval_at)), "increasing positive step counts")
        check_range("guidance", self.guidance, self.guidance >= 1.0, ">= 1")
        check_range("per_class", self.per_class, self.per_class <= 170, "<= 170 (5 disjoint real test sets)")
        for v in self.variants:
            check_range("variants", v, v in VARIANTS, f"a subset of {list(VARIANTS)}")


# ------------------------------------------------------------------------------------------------ stage 1
def load_encoder_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Frozen-encoder state dict from an SSL ``encoder.pt`` or from an ``autoencoder.safetensors`` (its
    ``encoder.*`` tensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k[len("encoder."):]: v for k, v in load_file(path).items() if k.startswith("encoder.")}
    return torch.load(path, map_location="cpu", weights_only=True)


def build_variant_autoencoder(encoder: str, ssl_weights: dict[str, torch.Tensor], seed: int) -> nn.Module:
    """The demo-preset ``SVGAutoencoder`` with the SSL encoder (``encoder="ssl"``) or the encoder as
    initialised under ``seed`` (``"random"``); residual encoder and decoder at their init under ``seed``."""
    from svg.autoencoder import SVGAutoencoder
    from svg.config import AE_PRESETS

    torch.manual_seed(seed)
    ae = SVGAutoencoder(AE_PRESETS["demo"])
    if encoder == "ssl":
        ae.encoder.load_state_dict(ssl_weights, strict=True)
    ae.encoder.eval().requires_grad_(False)
    return ae


class AblationStage1Model(nn.Module):
    """``training.stage1.Stage1Model`` with the alignment optional: ``forward(x (B, 3, 32, 32)) -> (x̂, latent)``.
    With ``align=False`` the residual channels enter the latent raw (the ablation's variant c)."""

    def __init__(self, ae: nn.Module, mask_ratio: float, align: bool):
        super().__init__()
        self.ae, self.mask_ratio, self.align = ae, mask_ratio, align
        self.mask_token = nn.Parameter(torch.randn(1, ae.config.residual.out_dim, 1) * 0.02)
        self.ae.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "AblationStage1Model":
        super().train(mode)
        self.ae.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from svg.dinov3 import patch_tokens
        from svg.residual import match_distribution

        x_in = self.ae.preprocess(x)
        with torch.no_grad():
            h = patch_tokens(self.ae.encoder, x_in).transpose(1, 2)
        r = self.ae.extra_vit(x_in)
        if self.training and self.mask_ratio > 0:
            drop = torch.rand(r.shape[0], 1, 1) < self.mask_ratio
            r = torch.where(drop, self.mask_token.expand_as(r), r)
        if self.align:
            r = match_distribution(h, r, mode="batch", eps=self.ae.config.align_eps)
        side = int(h.shape[-1] ** 0.5)
        z = torch.cat([h, r], dim=1).view(x.shape[0], -1, side, side)
        return self.ae.decoder(z), z


def train_autoencoder(variant: str, train: TensorDataset, out: Path, cfg: AblationConfig,
                      ssl_weights: dict[str, torch.Tensor]) -> nn.Module:
    """Stage 1 of one latent variant on ``train`` (MNIST images (N, 3, 32, 32) in [-1, 1], labels), resumable
    from ``out/stage1_last.pt``; returns the autoencoder in eval mode."""
    from training.common import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from training.losses import EncoderFeatureLoss
    from training.stage1 import Stage1Config, Stage1Loss

    kind, align = LATENT_VARIANTS[variant]
    ae = build_variant_autoencoder(kind, ssl_weights, cfg.seed)
    perceptual = EncoderFeatureLoss(build_variant_autoencoder("ssl", ssl_weights, cfg.seed).encoder)
    s1 = Stage1Config(steps=cfg.stage1_steps, batch_size=cfg.stage1_batch, lr=cfg.stage1_lr, disc_start=-1,
                      seed=cfg.seed)
    seed_everything(cfg.seed)
    model = AblationStage1Model(ae, s1.mask_ratio, align)
    loss_fn = Stage1Loss(perceptual, s1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s1.lr, betas=s1.betas)
    start, ckpt = 0, load_checkpoint(out / "stage1_last.pt")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["step"]
        set_rng_state(ckpt["rng"])
    batches = Batches(train, s1.batch_size, seed=cfg.seed).iterate(start)
    progress = Progress(s1.steps, start, 50, f"stage1[{variant}]")
    last_layer = model.ae.decoder.conv_out.weight
    model.train()
    for step in range(start + 1, s1.steps + 1):
        x, _ = next(batches)
        x_hat, _ = model(x)
        loss, logs = loss_fn.generator_loss(x, x_hat, step, last_layer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, **logs)
        if step % 100 == 0 or step == s1.steps:
            save_checkpoint(out / "stage1_last.pt", {"model": model.state_dict(), "opt": opt.state_dict(),
                                                     "step": step, "rng": rng_state()})
    return model.ae.eval()


# ------------------------------------------------------------------------------------------------ tokens
@torch.no_grad()
def encode_variant(ae: nn.Module, images: torch.Tensor, align: bool, batch: int = 500) -> torch.Tensor:
    """Raw latent tokens (N, 64, 104) float32 of ``images (N, 3, 32, 32)``: per-image alignment (the server's
    encoder) or, with ``align=False``, the raw residual channels."""
    from svg.latent import to_tokens

    ae.eval()
    out = []
    for x in images.split(batch):
        latent, raw = ae.encode_features(ae.preprocess(x), "per_image")
        if not align:
            b, _, h, w = latent.shape
            latent = torch.cat([latent[:, : ae.config.dino.embed_dim], raw.reshape(b, -1, h, w)], 1)
        out.append(to_tokens(latent))
    return torch.cat(out)


def decode_variant(ae: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Raw latent tokens (B, 64, C) -> images (B, 3, 32, 32) in [-1, 1] through the variant's decoder."""
    from svg.latent import to_latent

    return ae.decode(to_latent(tokens, 8, 8), clamp=True)


def pixel_tokens(images: torch.Tensor) -> torch.Tensor:
    """Grey images (N, 3, 32, 32) in [-1, 1] (channels equal) -> (N, 64, 16) tokens, 4×4 patches row-major."""
    from svg.latent import to_tokens

    return to_tokens(F.pixel_unshuffle(images[:, :1], PIXEL_PATCH))


def pixel_images(tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pixel_tokens`: (B, 64, 16) -> (B, 3, 32, 32) clamped to [-1, 1]."""
    from svg.latent import to_latent

    side = int(tokens.shape[1] ** 0.5)
    grey = F.pixel_shuffle(to_latent(tokens, side, side), PIXEL_PATCH)
    return grey.expand(-1, 3, -1, -1).clamp(-1, 1)


def prepare_tokens(variant: str, train: TensorDataset, test: TensorDataset, out: Path, cfg: AblationConfig,
                   ssl_weights: dict[str, torch.Tensor]) -> dict:
    """Token cache ``out/tokens.pt`` (raw tokens, labels, per-channel norm) and, for latent variants, the
    trained autoencoder ``out/autoencoder.pt``; skipped when they exist. Returns the cache's ``info``."""
    from training.stage1 import reconstruction_psnr
    from training.stage2 import latent_statistics

    cache = out / "tokens.pt"
    if cache.is_file():
        return torch.load(cache, map_location="cpu", weights_only=True)["info"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images, labels = train.tensors[0][: cfg.latent_images], train.tensors[1][: cfg.latent_images]
    info: dict = {"variant": variant}
    if variant == "pixels":
        tokens = pixel_tokens(images)
        info["recon_psnr_db"] = float("inf")
    else:
        ae = train_autoencoder(variant, train, out, cfg, ssl_weights)
        torch.save(ae.state_dict(), out / "autoencoder.pt")
        tokens = encode_variant(ae, images, LATENT_VARIANTS[variant][1])
        test_images = test.tensors[0][: cfg.psnr_images]
        align = LATENT_VARIANTS[variant][1]
        if align:
            info["recon_psnr_db"] = round(reconstruction_psnr(ae, test_images), 2)
        else:
            with torch.no_grad():
                rec = decode_variant(ae, encode_variant(ae, test_images, False))
            mse = ((test_images - rec) ** 2).mean((1, 2, 3)).clamp_min(1e-10)
            info["recon_psnr_db"] = round((10 * torch.log10(4.0 / mse)).mean().item(), 2)
    norm = latent_statistics(tokens)
    info["channels"] = int(tokens.shape[2])
    info["prepare_wall_s"] = round(time.perf_counter() - t0, 1)
    torch.save({"tokens": tokens, "labels": labels, "mean": norm.mean, "std": norm.std, "info": info}, cache)
    log.info("%s: tokens %s ready (%s)", variant, tuple(tokens.shape), info)
    return info


class Variant:
    """A prepared variant: its token cache and the decoder from normalised tokens to images."""

    def __init__(self, name: str, out: Path):
        from svg.latent import LatentNorm

        cache = torch.load(out / "tokens.pt", map_location="cpu", weights_only=True)
        self.name, self.out, self.info = name, out, cache["info"]
        self.tokens, self.labels = cache["tokens"], cache["labels"]
        self.norm = LatentNorm(cache["mean"], cache["std"])
        self.ae = None
        if name != "pixels":  # the state dict holds the frozen encoder too
            from svg.autoencoder import SVGAutoencoder
            from svg.config import AE_PRESETS

            self.ae = SVGAutoencoder(AE_PRESETS["demo"])
            self.ae.load_state_dict(torch.load(out / "autoencoder.pt", map_location="cpu", weights_only=True))
            self.ae.eval()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raw = self.norm.denormalize(tokens)
        return pixel_images(raw) if self.ae is None else decode_variant(self.ae, raw)


# ------------------------------------------------------------------------------------------------ diagnosis
@torch.no_grad()
def latent_diagnostics(tokens: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                       bank: int = 5000, queries: int = 2000) -> dict[str, float]:
    """Why a latent is easy or hard for the SiT: the spectrum of its per-channel normalised tokens and how
    semantic it is.

    ``tokens (N, T, C)`` raw, ``mean``/``std`` (1, 1, C). Returns ``pcs_90``/``pcs_99`` (principal components
    holding 90 / 99 % of the per-token variance; a small number out of C means most normalised channels are
    redundant and the flow must collapse isotropic noise onto a thin subspace), ``participation_ratio``
    ((Σλ)² / Σλ²), and ``knn`` (k-NN accuracy of the flattened normalised latent, ``bank`` training images vs
    the next ``queries``; training.ssl.knn_accuracy).
    """
    from training.ssl import knn_accuracy

    norm = (tokens - mean) / std
    flat = norm.reshape(-1, norm.shape[-1])[::7].double()  # every 7th token: ample for C <= 104
    ev = torch.linalg.eigvalsh(torch.cov(flat.T)).flip(0).clamp(min=0)
    cum = ev.cumsum(0) / ev.sum()
    f, n = norm.flatten(1), norm.shape[0]
    q = min(queries, n - min(bank, n // 2))
    b = min(bank, n - q)
    return {"channels": int(norm.shape[-1]), "pcs_90": int((cum < 0.9).sum()) + 1,
            "pcs_99": int((cum < 0.99).sum()) + 1, "participation_ratio": float(ev.sum() ** 2 / (ev ** 2).sum()),
            "knn": knn_accuracy(f[:b], labels[:b], f[n - q:], labels[n - q:])}


def diagnose(out: str | Path, csv: str | Path | None, variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """:func:`latent_diagnostics` of every prepared variant under ``out`` (one CSV row each)."""
    from training.evaluate import write_csv

    rows = []
    for name in variants:
        cache = Path(out) / name / "tokens.pt"
        if cache.is_file():
            c = torch.load(cache, map_location="cpu", weights_only=True)
            rows.append({"variant": name, **latent_diagnostics(c["tokens"], c["labels"], c["mean"], c["std"]),
                         "recon_psnr_db": c["info"]["recon_psnr_db"]})
            log.info("%s: %s", name, rows[-1])
    if csv and rows:
        write_csv(rows, csv)
    return rows


# ------------------------------------------------------------------------------------------------ stage 2
def train_segment(variant: Variant, cfg: AblationConfig, until: int):
    """Train the variant's SiT to ``until`` optimizer steps (resuming ``stage2_last.pt``); returns the trainer."""
    from svg.config import sit_preset
    from training.stage2 import Stage2Config, Stage2Trainer, TokenBatches

    sit_cfg = dataclasses.replace(sit_preset("demo"), in_channels=variant.info["channels"])
    s2 = Stage2Config(steps=cfg.eval_at[-1], batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup,
                      ema_decay=cfg.ema_decay, clip_grad=1.0, seed=cfg.seed + 1234, log_every=50,
                      ckpt_every=50)
    trainer = Stage2Trainer(sit_cfg, s2, preset=None)
    ckpt = variant.out / "stage2_last.pt"
    trainer.resume(ckpt)
    batches = TokenBatches(variant.tokens, variant.labels, variant.norm, s2.batch_size, trainer.d, s2.seed,
                           trainer.step_count)
    progress = Progress(until, trainer.step_count, s2.log_every, f"stage2[{variant.name}]")
    while trainer.step_count < until:
        logs = trainer.step(lambda i: next(batches))
        progress(trainer.step_count, **logs)
        if trainer.step_count % s2.ckpt_every == 0 or trainer.step_count == until:
            trainer.save(ckpt)
    return trainer


def run(data: str, ssl_encoder: str | Path, out: str | Path, cfg: AblationConfig, csv: str | Path | None = None,
        plot: str | Path | None = None, classifier_path: str | Path | None = None) -> list[dict]:
    """The whole ablation (resumable); returns every result row (also in ``out/results.jsonl``)."""
    from training.evaluate import DEFAULT_CLASSIFIER, RealReference, load_or_train_classifier, sweep, write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    ssl_weights = load_encoder_weights(ssl_encoder)
    if not all((out / name / "tokens.pt").is_file() for name in cfg.variants):
        from training.data import load_mnist

        train, test = load_mnist(data, "train"), load_mnist(data, "test")  # once: 740 MB as float32
        for name in cfg.variants:
            prepare_tokens(name, train, test, out / name, cfg, ssl_weights)
        del train, test
    classifier, _ = load_or_train_classifier(data, classifier_path or DEFAULT_CLASSIFIER)
    ref = RealReference(classifier, data, cfg.per_class, cfg.seed)
    results_path = out / "results.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    done = {(r["variant"], r["train_steps"]) for r in rows}
    guidance = (1.0, cfg.guidance) if cfg.guidance != 1.0 else (1.0,)
    for until in cfg.eval_at:
        for name in cfg.variants:
            if (name, until) in done:
                continue
            variant = Variant(name, out / name)
            trainer = train_segment(variant, cfg, until)
            sit = trainer.ema.model
            for r in sweep(sit, variant.decode, classifier, ref, guidance, cfg.sample_steps, cfg.shift, cfg.seed):
                rows.append({"variant": name, "train_steps": until, **r, "train_wall_s": round(trainer.elapsed(), 1),
                             "recon_psnr_db": variant.info["recon_psnr_db"]})
                with results_path.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
            if csv:
                write_csv(rows, csv, CSV_FIELDS)
                plot_ablation(rows, plot or Path(csv).with_suffix(".png"), cfg)
    return rows


def plot_ablation(rows: list[dict], path: str | Path, cfg: AblationConfig) -> None:
    """FD / floor and accuracy against training steps: one panel per (sampling steps, guidance), one line per
    variant (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["steps"], r["guidance_scale"]) for r in rows})
    fig, axes = plt.subplots(2, len(settings), figsize=(3.6 * len(settings), 6.4), squeeze=False)
    for j, (n, w) in enumerate(settings):
        for name in cfg.variants:
            rs = sorted((r for r in rows if r["variant"] == name and r["steps"] == n and r["guidance_scale"] == w),
                        key=lambda r: r["train_steps"])
            if not rs:
                continue
            x = [r["train_steps"] for r in rs]
            axes[0, j].errorbar(x, [r["fd_ratio"] for r in rs], [r["fd_std"] / r["fd_floor"] for r in rs],
                                marker="o", capsize=3, label=name)
            axes[1, j].errorbar(x, [100 * r["accuracy"] for r in rs], [100 * r["accuracy_se"] for r in rs],
                                marker="o", capsize=3, label=name)
        axes[0, j].set_title(f"{n} steps, guidance {w:g}")
        axes[0, j].set_yscale("log")
        axes[0, j].set_ylabel("FD / real floor")
        axes[1, j].set_ylabel("accuracy (%)")
        for ax in axes[:, j]:
            ax.set_xlabel("SiT training steps")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"SVG ablation on MNIST: {cfg.per_class * 10} samples per point, seed {cfg.seed}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    d = AblationConfig()
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/mnist.npz")
    p.add_argument("--ssl-encoder", default="models/demo/autoencoder.safetensors",
                   help="SSL encoder: an encoder.pt state dict or an autoencoder.safetensors holding one")
    p.add_argument("--out", default="runs/ablation", help="checkpoints, token caches, results.jsonl")
    p.add_argument("--csv", default="benchmarks/ablation.csv")
    p.add_argument("--plot", default=None, help="PNG (default: the CSV path with .png)")
    p.add_argument("--classifier", default=None, help="evaluation classifier cache (training.evaluate)")
    p.add_argument("--stage1-steps", type=int, default=d.stage1_steps)
    p.add_argument("--latent-images", type=int, default=d.latent_images)
    p.add_argument("--eval-at", type=int, nargs="+", default=list(d.eval_at), help="SiT steps; last = budget")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--per-class", type=int, default=d.per_class)
    p.add_argument("--guidance", type=float, default=d.guidance)
    p.add_argument("--variants", nargs="+", default=list(d.variants))
    p.add_argument("--report", action="store_true", help="only rewrite the CSV and plot from results.jsonl")
    p.add_argument("--diagnose", default=None, metavar="CSV",
                   help="only write the latent diagnostics (spectrum, k-NN) of the prepared variants to CSV")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (use 1 on an oversubscribed machine)")
    a = p.parse_args(argv)
    with usage_errors(p):
        cfg = AblationConfig(stage1_steps=a.stage1_steps, latent_images=a.latent_images, eval_at=tuple(a.eval_at),
                             batch_size=a.batch_size, per_class=a.per_class, guidance=a.guidance,
                             variants=tuple(a.variants))
        check_range("threads", a.threads, a.threads >= 1, ">= 1")
    require_data(p, a.data)
    require_file(p, "--ssl-encoder", a.ssl_encoder)
    torch.set_num_threads(a.threads)
    if a.report:  # CSV and plot from results.jsonl (e.g. after variants ran in separate processes)
        rows = [json.loads(line) for line in (Path(a.out) / "results.jsonl").read_text().splitlines()]
        from training.evaluate import write_csv

        write_csv(rows, a.csv, CSV_FIELDS)
        plot_ablation(rows, a.plot or Path(a.csv).with_suffix(".png"), cfg)
        return
    if a.diagnose:
        setup_logging()
        diagnose(a.out, a.diagnose, cfg.variants)
        return
    setup_logging(Path(a.out) / "ablation.log")
    t0 = time.perf_counter()
    rows = run(a.data, a.ssl_encoder, a.out, cfg, a.csv, a.plot, a.classifier)
    log.info("ablation done: %d rows in %.0f s", len(rows), time.perf_counter() - t0)


if __name__ == "__main__":
    main()

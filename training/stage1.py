"""Stage 1: train the SVG autoencoder's residual encoder and decoder on top of the frozen encoder.

Source: svg_reference.md §2.4–§2.8 and §8 (reference ``DinoDecoder`` + ``LPIPSWithDiscriminatorDecoder``):

* the frozen DINO encoder runs in eval mode under ``no_grad`` (the reference computed its gradients for nothing);
* the residual map is replaced per sample by a learned ``mask_token`` (1, C_res, 1) with probability 0.1, before
  the distribution alignment (paper Eq. 6) with batch statistics (the reference's training behaviour);
* ``nll = Σ_pixels (|x − x̂| + w_p·P(x, x̂)) / B`` (per-image sum, so values in the thousands are normal),
  ``logvar`` fixed at 0 as in the reference;
* optional PatchGAN hinge loss with the adaptive weight, from ``disc_start`` on (0.5 × clamp[0, 1e4]);
* Adam(lr 1e-4, betas 0.5/0.9) for the residual encoder + decoder + mask token, another for the discriminator;
  no scheduler, no EMA (reference §2.8).

The perceptual loss ``P`` is LPIPS-VGG when ``--lpips-vgg``/``--lpips-lin`` weight files are given, otherwise
:class:`training.losses.EncoderFeatureLoss` on the frozen encoder (no download needed).

Run (demo): ``python -m training.stage1 --data ../shared/data/mnist.npz --preset demo --encoder
runs/demo/ssl/encoder.pt --out runs/demo/stage1 --steps 1200 --batch-size 32 --lr 4e-4 --disc-start -1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from svg.config import ae_preset
from svg.dinov3 import patch_tokens
from svg.residual import match_distribution
from training.cli import check_range, require_data, require_file, usage_errors
from training.common import (Batches, Dist, Progress, ResumeError, check_resume_settings, cleanup_distributed,
                             load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state,
                             setup_distributed, setup_logging, unwrap, warn_not_exact)
from training.data import build_dataset
from training.losses import LPIPS, EncoderFeatureLoss, PatchDiscriminator, adaptive_weight, hinge_d_loss

log = logging.getLogger("training.stage1")


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 hyperparameters; defaults are the reference's (§2.8, §8)."""

    steps: int = 100_000
    batch_size: int = 64  # per process (64 × 8 GPUs = 512 in the reference)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    perceptual_weight: float = 1.0
    mask_ratio: float = 0.1
    disc_start: int = 5001  # optimizer steps of the generator; <0 disables the GAN
    disc_weight: float = 0.5
    disc_layers: int = 3
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} out of range; allowed: [0, 1)")
        for name in ("steps", "batch_size", "disc_layers", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} out of range; allowed: >= 1")
        if not self.lr > 0:  # same rule as stage 2; torch's own message names no flag
            raise ValueError(f"lr={self.lr} out of range; allowed: > 0")
        if not self.perceptual_weight >= 0:
            raise ValueError(f"perceptual_weight={self.perceptual_weight} out of range; allowed: >= 0")


# Settings a resumed run may change (docs/training.md "Resuming"); every other Stage1Config field must match.
RESUME_MAY_CHANGE = frozenset({"steps", "log_every", "ckpt_every"})
CLI_FLAGS = {k: "--" + k.replace("_", "-") for k in ("steps", "batch_size", "lr", "disc_start", "disc_layers",
                                                     "perceptual_weight", "seed")}


class Stage1Model(nn.Module):
    """The trainable wrapper: the autoencoder (``encoder`` frozen) plus the residual ``mask_token``.

    ``forward(x (B, 3, H, W) in [-1, 1]) -> (x̂ (B, 3, H, W), latent (B, C, h, w))``; in train mode the residual
    map is masked per sample with probability ``mask_ratio``.
    """

    def __init__(self, ae: nn.Module, mask_ratio: float):
        super().__init__()
        self.ae = ae
        self.mask_ratio = mask_ratio
        c_res = ae.config.residual.out_dim
        self.mask_token = nn.Parameter(torch.randn(1, c_res, 1) * 0.02)  # N(0, 0.02), reference init
        self.ae.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "Stage1Model":
        super().train(mode)
        self.ae.encoder.eval()  # frozen encoder: eval mode always
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = self.ae.preprocess(x)  # ImageNet-normalised, model resolution
        with torch.no_grad():
            h = patch_tokens(self.ae.encoder, x_in).transpose(1, 2)  # (B, C_dino, N)
        r = self.ae.extra_vit(x_in)  # (B, C_res, N)
        if self.training and self.mask_ratio > 0:
            drop = torch.rand(r.shape[0], 1, 1, device=r.device) < self.mask_ratio
            r = torch.where(drop, self.mask_token.to(r.dtype).expand_as(r), r)
        r = match_distribution(h, r, mode="batch", eps=self.ae.config.align_eps)
        side = int(h.shape[-1] ** 0.5)
        z = torch.cat([h, r], dim=1).view(x.shape[0], -1, side, side)  # (B, C, h, w)
        return self.ae.decoder(z), z


class Stage1Loss(nn.Module):
    """Reconstruction + perceptual (+ GAN) loss of stage 1. The perceptual net is frozen and in eval mode.

    ``generator_loss(x, x̂, step, last_layer) -> (loss, logs)`` and ``discriminator_loss(x, x̂) -> loss``;
    the GAN term is exactly 0 and no ``autograd.grad`` is called while ``step < disc_start`` (cases T10).
    """

    def __init__(self, perceptual: nn.Module | None, cfg: Stage1Config):
        super().__init__()
        self.perceptual, self.cfg = perceptual, cfg
        self.discriminator = PatchDiscriminator(n_layers=cfg.disc_layers) if cfg.disc_start >= 0 else None

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.cfg.disc_start

    def generator_loss(self, x: torch.Tensor, x_hat: torch.Tensor, step: int,
                       last_layer: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rec = (x - x_hat).abs()  # (B, 3, H, W)
        p = torch.zeros(x.shape[0], device=x.device)
        if self.perceptual is not None and self.cfg.perceptual_weight > 0:
            p = self.perceptual(x, x_hat)  # (B,), broadcast over every pixel as in the reference
        nll = (rec + self.cfg.perceptual_weight * p.view(-1, 1, 1, 1)).sum() / x.shape[0]
        logs = {"nll": nll.item(), "l1": rec.mean().item(), "perceptual": p.mean().item()}
        if not self.gan_active(step):
            return nll, logs
        g = -self.discriminator(x_hat).mean()
        w = adaptive_weight(nll, g, last_layer, self.cfg.disc_weight)
        logs.update(g=g.item(), d_weight=w.item())
        return nll + w * g, logs

    def discriminator_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return hinge_d_loss(self.discriminator(x), self.discriminator(x_hat.detach()))


def build_perceptual(encoder: nn.Module, lpips_vgg: str | None, lpips_lin: str | None) -> nn.Module:
    """LPIPS-VGG when both weight files are given, else the encoder-feature loss (documented alternative)."""
    if lpips_vgg or lpips_lin:
        if not (lpips_vgg and lpips_lin):
            raise ValueError("LPIPS needs both --lpips-vgg and --lpips-lin (got only one)")
        return LPIPS(lpips_vgg, lpips_lin)
    return EncoderFeatureLoss(encoder)


def build_autoencoder(preset: str, encoder_weights: str | Path | None) -> nn.Module:
    """``SVGAutoencoder`` of ``preset`` with the frozen encoder loaded from a state-dict file (SSL output)."""
    from svg.autoencoder import SVGAutoencoder

    ae = SVGAutoencoder(ae_preset(preset))
    if encoder_weights is not None:
        ae.encoder.load_state_dict(torch.load(encoder_weights, map_location="cpu", weights_only=True), strict=True)
    ae.encoder.eval().requires_grad_(False)
    return ae


def build_optimizers(model: Stage1Model, loss_fn: Stage1Loss,
                     cfg: Stage1Config) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """Adam for the trainable autoencoder parts + mask token, and Adam for the discriminator (``None`` without
    GAN); reference §2.8. The frozen encoder and the perceptual net are in neither (cases T11)."""
    params = [p for p in model.parameters() if p.requires_grad]  # the frozen encoder has requires_grad=False
    opt_g = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    opt_d = (torch.optim.Adam(loss_fn.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
             if loss_fn.discriminator is not None else None)
    return opt_g, opt_d


def train_stage1(ae: nn.Module, data: str, out: str | Path, cfg: Stage1Config, perceptual: nn.Module | None,
                 dist_info: Dist | None = None, preset: str | None = None, workers: int = 0,
                 report: dict | None = None) -> nn.Module:
    """Train ``ae``'s residual encoder + decoder (in place); resumes from ``out/stage1_last.pt``.

    Returns the trained autoencoder in eval mode. DDP when ``dist_info.world > 1``. ``preset`` (the autoencoder
    preset name) is recorded in the checkpoint for the resume check. ``workers``: DataLoader processes for
    ImageFolder data (any count gives the same batches, case T14). ``report`` (a dict, optional) receives
    ``bit_exact`` and ``not_bit_exact_reasons``: why a resume could not continue the RNG and data streams exactly.

    Raises:
        ResumeError: the checkpoint has another autoencoder config (preset), world size or a setting outside
            ``RESUME_MAY_CHANGE`` (T13); the message lists every difference (old → new).
    """
    out = Path(out)
    d = dist_info or Dist(0, 1, 0, torch.device("cpu"))
    seed_everything(cfg.seed)  # identical init of mask token / discriminator on every rank
    model = Stage1Model(ae, cfg.mask_ratio).to(d.device)
    loss_fn = Stage1Loss(perceptual, cfg).to(d.device)
    opt_g, opt_d = build_optimizers(model, loss_fn, cfg)
    start = 0
    not_exact: list[str] = []
    sampler = Batches(build_dataset(data, ae.config.dino.img_size), cfg.batch_size, d.rank, d.world,
                      seed=cfg.seed, workers=workers)
    ckpt = load_checkpoint(out / "stage1_last.pt")
    if ckpt is not None:
        _check_compatible(out, ckpt, ae.config.to_dict(), preset, cfg, d)
        model.load_state_dict(ckpt["model"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if opt_d is not None:
            loss_fn.discriminator.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
        start = ckpt["step"]
        rngs = ckpt.get("rng")
        reasons = set_rng_state(rngs[d.rank] if isinstance(rngs, list) else rngs)
        reasons += sampler.state_mismatch(ckpt.get("data"), start)
        warn_not_exact(reasons, f"stage1 resume from {out / 'stage1_last.pt'}")
        not_exact = list(ckpt.get("not_bit_exact", [])) + reasons
        log.info("stage1: resumed at step %d", start)
    else:
        torch.manual_seed(cfg.seed * d.world + d.rank)  # per-rank masking draws
    ddp = model
    if d.world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    disc = loss_fn.discriminator
    if disc is not None and d.world > 1:
        disc = nn.parallel.SyncBatchNorm.convert_sync_batchnorm(disc)
    batches = sampler.iterate(start)
    progress = Progress(cfg.steps, start, cfg.log_every, "stage1", enabled=d.main)
    last_layer = unwrap(model).ae.decoder.conv_out.weight
    ddp.train()
    for step in range(start + 1, cfg.steps + 1):
        x, _ = next(batches)
        x = x.to(d.device, non_blocking=True)
        x_hat, _ = ddp(x)
        loss, logs = loss_fn.generator_loss(x, x_hat, step, last_layer)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if loss_fn.gan_active(step):
            d_loss = loss_fn.discriminator_loss(x, x_hat)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logs["d_loss"] = d_loss.item()
        progress(step, **logs)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            _save(out, model, loss_fn, opt_g, opt_d, step, cfg, d, preset,
                  {"data": sampler.state(step), "not_bit_exact": not_exact})
    progress.close()
    if report is not None:
        report.update(bit_exact=not not_exact, not_bit_exact_reasons=not_exact)
    return unwrap(model).ae.eval()


def _check_compatible(out: Path, ckpt: dict, ae_config: dict, preset: str | None, cfg: Stage1Config,
                      d: Dist) -> None:
    saved = ckpt.get("ae_config")
    if saved is not None and saved != ae_config:
        old = ckpt.get("preset")
        what = (f"was trained with preset {old}; this run asks for {preset}" if old and preset
                else "has another autoencoder config")
        again = f"--preset {old}" if old else "the checkpoint's preset"
        raise ResumeError(f"the checkpoint in {out} {what}. Resume with {again}, or start a new run with "
                          f"another --out.")
    if isinstance(ckpt.get("rng"), list) and len(ckpt["rng"]) != d.world:
        raise ResumeError(f"checkpoint {out / 'stage1_last.pt'} was written with world={len(ckpt['rng'])}; this run "
                          f"has world={d.world}. Resume with the same number of processes.")
    current = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    check_resume_settings(out, ckpt["config"], current, RESUME_MAY_CHANGE, CLI_FLAGS)


def _save(out: Path, model, loss_fn, opt_g, opt_d, step: int, cfg: Stage1Config, d: Dist,
          preset: str | None = None, extra: dict | None = None) -> None:
    rngs = [None] * d.world
    if d.world > 1:
        torch.distributed.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if not d.main:
        return
    state = {"model": unwrap(model).state_dict(), "opt_g": opt_g.state_dict(), "step": step,
             "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "rng": rngs,
             "ae_config": unwrap(model).ae.config.to_dict(), "preset": preset, **(extra or {})}
    if opt_d is not None:
        state.update(discriminator=unwrap(loss_fn.discriminator).state_dict(), opt_d=opt_d.state_dict())
    save_checkpoint(out / "stage1_last.pt", state)


@torch.no_grad()
def reconstruction_psnr(ae: nn.Module, images: torch.Tensor, batch: int = 250, align: str = "per_image") -> float:
    """Mean PSNR (dB, peak-to-peak 2 for [-1, 1] images) of ``decode(encode(x))`` over ``images (N, 3, H, W)``."""
    ae.eval()
    psnrs = []
    for x in images.split(batch):
        x_hat = ae.decode(ae.encode(x, align=align), clamp=True)
        mse = ((x - x_hat) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(4.0 / mse))
    return torch.cat(psnrs).mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.stage1", description="SVG stage 1: autoencoder training")
    p.add_argument("--data", required=True, help="mnist.npz or an ImageFolder root")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="svg-ae", help="autoencoder preset (svg.config.AE_PRESETS)")
    p.add_argument("--encoder", default=None, help="frozen encoder state dict (e.g. runs/demo/ssl/encoder.pt)")
    p.add_argument("--lpips-vgg", default=None, help="torchvision vgg16 ImageNet state dict (enables LPIPS)")
    p.add_argument("--lpips-lin", default=None, help="LPIPS vgg.pth lin-layer weights (enables LPIPS)")
    p.add_argument("--steps", type=int, default=Stage1Config.steps)
    p.add_argument("--batch-size", type=int, default=Stage1Config.batch_size)
    p.add_argument("--lr", type=float, default=Stage1Config.lr)
    p.add_argument("--disc-start", type=int, default=Stage1Config.disc_start, help="<0 disables the GAN")
    p.add_argument("--disc-layers", type=int, default=Stage1Config.disc_layers)
    p.add_argument("--perceptual-weight", type=float, default=Stage1Config.perceptual_weight)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=Stage1Config.log_every, help="steps between log lines")
    p.add_argument("--ckpt-every", type=int, default=Stage1Config.ckpt_every,
                   help="steps between checkpoints (<out>/stage1_last.pt)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader processes for ImageFolder data (the batches are the same for any count)")
    p.add_argument("--psnr-images", type=int, default=2000,
                   help="test images for the reconstruction PSNR in stage1_result.json (0 = skip)")
    p.add_argument("--export", default=None, help="write autoencoder.safetensors into this directory")
    a = p.parse_args(argv)
    with usage_errors(p):
        cfg = Stage1Config(steps=a.steps, batch_size=a.batch_size, lr=a.lr, disc_start=a.disc_start,
                           disc_layers=a.disc_layers, perceptual_weight=a.perceptual_weight, seed=a.seed,
                           log_every=a.log_every, ckpt_every=a.ckpt_every)
        check_range("workers", a.workers, a.workers >= 0, ">= 0")
        check_range("psnr_images", a.psnr_images, a.psnr_images >= 0, ">= 0 (0 = skip)")
    with usage_errors(p, "--preset"):
        ae_preset(a.preset)
    require_data(p, a.data)
    for flag, path in (("--encoder", a.encoder), ("--lpips-vgg", a.lpips_vgg), ("--lpips-lin", a.lpips_lin)):
        require_file(p, flag, path)
    if bool(a.lpips_vgg) != bool(a.lpips_lin):
        p.error("argument --lpips-vgg/--lpips-lin: LPIPS needs both files (got only one)")
    d = setup_distributed()
    setup_logging(Path(a.out) / "stage1.log" if d.main else None)
    ae = build_autoencoder(a.preset, a.encoder)
    perceptual = build_perceptual(ae.encoder, a.lpips_vgg, a.lpips_lin)
    t0 = time.perf_counter()
    report: dict = {}
    with usage_errors(p, errors=(ResumeError,)):  # a resume refusal (T13), checked before the first step
        ae = train_stage1(ae, a.data, a.out, cfg, perceptual, d, preset=a.preset, workers=a.workers, report=report)
    if d.main:
        from training.export import export_autoencoder

        test = build_dataset(a.data, ae.config.dino.img_size, "test")
        images = test.tensors[0][:a.psnr_images] if hasattr(test, "tensors") and a.psnr_images else None
        result = {"steps": a.steps, "wall_s": round(time.perf_counter() - t0, 1), **report}
        if images is not None:
            result["psnr_db"] = round(reconstruction_psnr(ae, images), 2)
        (Path(a.out) / "stage1_result.json").write_text(json.dumps(result, indent=2))
        log.info("stage1 done: %s", result)
        if a.export:
            export_autoencoder(ae, a.export, {"preset": a.preset, "train_steps": str(a.steps)})
    cleanup_distributed()


if __name__ == "__main__":
    main()

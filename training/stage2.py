"""Stage 2: flow-matching training of the SiT on normalised latent tokens.

Source: svg_reference.md §5 and §8 (reference ``train_svg.py`` with ``config/example_svg_xl.yaml``): t ~ U(0, 1)
then shifted with s = 0.4 (t = 0 noise, t = 1 data), velocity target data − noise, plain MSE
(``svg.flow.flow_matching_loss``); label dropout 0.1 inside the SiT (train mode only); AdamW lr 1e-4, wd 0,
betas (0.9, 0.999), constant LR, no clipping; EMA 0.9999 in fp32, initialised as a copy, updated once per
optimizer step after ``optimizer.step()``; per-rank seed ``global_seed · world + rank``.

Additions a production trainer needs (cases T01–T16): gradient accumulation with DDP ``no_sync`` on all but the
last micro-batch; optional bf16 autocast (GPU); optional grad-norm clipping (the norm is always logged); a
non-finite loss or gradient skips the optimizer *and* the EMA update, is counted, and K consecutive skips abort;
optional warmup + cosine LR schedule; resumable checkpoints with model, EMA, optimizer, scheduler, step, config
and every RNG state (resumed == uninterrupted, bit for bit), keys without wrapper prefixes.

Latents come from the frozen autoencoder: encoded once into a cache (``--latents``, fast path for small data
such as the demo) or on the fly per batch (ImageNet scale, as the reference does).

Run (demo): ``python -m training.stage2 --data ../shared/data/mnist.npz --model-dir models/demo --preset demo
--out runs/demo/stage2 --latents runs/demo/latents.pt --steps 8000 --batch-size 64 --lr 1e-3``;
multi-GPU: ``torchrun --nproc_per_node 8 -m training.stage2 ...`` (docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from svg.config import SiTConfig, sit_preset
from svg.flow import TRAIN_SHIFT, flow_matching_loss
from svg.sit import SiT
from training.cli import check_range, require_data, require_model_files, usage_errors
from training.common import (EMA, Batches, Dist, Progress, ResumeError, check_resume_settings,
                             cleanup_distributed, load_checkpoint, no_sync_unless, rank_seed, rng_state,
                             save_checkpoint, seed_everything, set_rng_state, setup_distributed, setup_logging,
                             unwrap, warn_not_exact)

log = logging.getLogger("training.stage2")


class NonFiniteError(RuntimeError):
    """Raised after ``max_skips`` consecutive optimizer steps with a non-finite loss or gradient."""


@dataclass(frozen=True)
class Stage2Config:
    """Stage-2 hyperparameters; defaults are the reference's (§8). ``batch_size`` is per process and per
    micro-batch: the global batch is ``batch_size · accum · world``."""

    steps: int = 7_000_000
    batch_size: int = 32
    accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    cosine: bool = False  # constant LR (reference) unless set
    min_lr_ratio: float = 0.0
    ema_decay: float = 0.9999
    shift: float = TRAIN_SHIFT
    clip_grad: float | None = None
    bf16: bool = False  # autocast on CUDA only
    max_skips: int = 10
    seed: int = 1234
    log_every: int = 100
    ckpt_every: int = 5000

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum", "max_skips", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} out of range; allowed: >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} out of range; allowed: >= 0")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad={self.clip_grad} out of range; allowed: > 0 (omit it for no clipping)")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} out of range; allowed: [0, 1]")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} out of range; allowed: > 0")


# Settings a resumed run may change (docs/training.md "Resuming"); every other Stage2Config field must match the
# checkpoint. ``steps`` only without --cosine: the cosine schedule's length is ``steps``.
RESUME_MAY_CHANGE = frozenset({"steps", "log_every", "ckpt_every", "max_skips"})
CLI_FLAGS = {k: "--" + k.replace("_", "-") for k in ("steps", "batch_size", "accum", "lr", "warmup", "cosine",
                                                     "ema_decay", "clip_grad", "bf16", "seed")}


def lr_lambda(cfg: Stage2Config):
    """LR multiplier per optimizer step: linear warmup, then constant or cosine down to ``min_lr_ratio``."""

    def f(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if not cfg.cosine:
            return 1.0
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class Stage2Trainer:
    """Owns model, EMA, optimizer, scheduler and RNGs of one stage-2 run; ``step()`` performs one optimizer step
    over ``accum`` micro-batches. Build it, then ``resume()`` (EMA exists before the checkpoint is loaded, T01).

    ``batch_fn(micro_index) -> (x (B, T, C) float32 normalised tokens, y (B,) int64)`` supplies data.
    """

    def __init__(self, sit_config: SiTConfig, cfg: Stage2Config, d: Dist | None = None,
                 model: nn.Module | None = None, preset: str | None = None):
        self.cfg, self.d, self.preset = cfg, d or Dist(0, 1, 0, torch.device("cpu")), preset
        seed_everything(cfg.seed)  # identical init on every rank
        self.model = (model if model is not None else SiT(sit_config)).to(self.d.device)
        self.ema = EMA(self.model, cfg.ema_decay)  # a copy (decay 0 start), built before any resume
        self.ddp = (nn.parallel.DistributedDataParallel(self.model) if self.d.world > 1 else self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=cfg.betas)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        seed = rank_seed(cfg.seed, self.d.rank, self.d.world)
        torch.manual_seed(seed)  # label dropout inside the model draws from the global RNG
        self.gen = torch.Generator(device=self.d.device).manual_seed(seed)  # noise and t
        self.step_count, self.skipped, self.consecutive_skips = 0, 0, 0
        self.wall_before, self._t0 = 0.0, time.perf_counter()  # training seconds of earlier segments, this start
        # Why this run is not bit-exact w.r.t. an uninterrupted one (T14): kept across resumes, saved, reported.
        self.not_bit_exact: list[str] = []
        self.sampler: Batches | None = None  # the data stream's sampler (check_data), its state is saved
        self.resumed_data_state: dict | None = None  # what the checkpoint held, for check_data()

    def elapsed(self) -> float:
        """Training wall time in seconds over all resumed segments."""
        return self.wall_before + time.perf_counter() - self._t0

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict()["model"],
                "ema_updates": self.ema.num_updates, "ema_decay": self.ema.decay,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "step": self.step_count, "skipped": self.skipped, "config": asdict(self.cfg),
                "sit_config": unwrap(self.model).config.to_dict(), "preset": self.preset, "world": self.d.world,
                "wall_s": self.elapsed(), "not_bit_exact": list(self.not_bit_exact),
                "data": self.sampler.state(self.step_count * self.cfg.accum) if self.sampler else None}

    def save(self, path: str | Path) -> None:
        """Checkpoint with every rank's RNG state (gathered to rank 0, which writes)."""
        rngs = [None] * self.d.world
        mine = rng_state({"noise": self.gen})
        if self.d.world > 1:
            torch.distributed.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if self.d.main:
            save_checkpoint(path, {**self.state_dict(), "rng": rngs})

    def resume(self, path: str | Path) -> bool:
        """Load ``path`` if it exists; returns whether it did.

        Raises:
            ResumeError: the checkpoint has another SiT config (preset), world size, or training settings outside
                ``RESUME_MAY_CHANGE``: the RNG streams, the global batch or the optimizer would change silently
                (T13). The message lists every difference (old → new).
        """
        path = Path(path)
        ckpt = load_checkpoint(path)
        if ckpt is None:
            return False
        self._check_compatible(path, ckpt)
        unwrap(self.model).load_state_dict(ckpt["model"], strict=True)
        self.ema.load_state_dict({"model": ckpt["ema"], "num_updates": ckpt["ema_updates"],
                                  "decay": ckpt["ema_decay"]})
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step_count, self.skipped = ckpt["step"], ckpt["skipped"]
        self.wall_before, self._t0 = float(ckpt.get("wall_s", 0.0)), time.perf_counter()
        rngs = ckpt.get("rng")
        reasons = set_rng_state(rngs[self.d.rank] if rngs else None, {"noise": self.gen})
        warn_not_exact(reasons, f"stage2 resume from {path}")
        self.not_bit_exact = list(ckpt.get("not_bit_exact", [])) + reasons
        self.resumed_data_state = ckpt.get("data")
        return True

    def check_data(self, batches: Batches, start_batch: int) -> None:
        """Register the data stream's sampler (its state goes into every checkpoint) and, after a resume, compare it
        with the checkpoint's: a mismatch, or an older checkpoint without it, is logged and recorded as not
        bit-exact (T14)."""
        self.sampler = batches
        if self.step_count == 0:
            return
        reasons = batches.state_mismatch(self.resumed_data_state, start_batch)
        warn_not_exact(reasons, "stage2 resume")
        self.not_bit_exact += reasons

    @property
    def bit_exact(self) -> bool:
        """Whether every resume so far restored RNGs and data order exactly."""
        return not self.not_bit_exact

    def _check_compatible(self, path: Path, ckpt: dict) -> None:
        sit_config = unwrap(self.model).config.to_dict()
        if ckpt["sit_config"] != sit_config:
            old, new = ckpt.get("preset"), self.preset
            if old and new and old != new:
                what = f"was trained with preset {old}; this run asks for {new}"
            else:
                diff = [f"{k} {ckpt['sit_config'].get(k)} → {v}" for k, v in sit_config.items()
                        if ckpt["sit_config"].get(k) != v]
                what = f"has another SiT config ({', '.join(diff)})"
            again = f"--preset {old}" if old else "the checkpoint's preset"
            raise ResumeError(f"the checkpoint in {path.parent} {what}. Resume with {again}, or start a new run "
                              f"with another --out.")
        if ckpt["world"] != self.d.world:
            raise ResumeError(f"checkpoint {path} was written with world={ckpt['world']}; this run has "
                              f"world={self.d.world}. Resume with the same number of processes.")
        may_change = RESUME_MAY_CHANGE - ({"steps"} if self.cfg.cosine else set())
        check_resume_settings(path.parent, ckpt["config"], asdict(self.cfg), may_change, CLI_FLAGS)

    # ------------------------------------------------------------------------------------------------- step
    def step(self, batch_fn) -> dict[str, float]:
        """One optimizer step; returns ``loss`` (mean over micro-batches), ``grad_norm``, ``lr``, ``skipped``."""
        cfg = self.cfg
        self.ddp.train()
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.d.device)
        use_bf16 = cfg.bf16 and self.d.device.type == "cuda"
        for i in range(cfg.accum):
            x, y = batch_fn(i)
            x, y = x.to(self.d.device, non_blocking=True), y.to(self.d.device, non_blocking=True)
            # no_sync wraps forward AND backward of micro-batches 0..k-2; the last one all-reduces (T15)
            with no_sync_unless(self.ddp, sync=(i == cfg.accum - 1)):
                autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
                with autocast:
                    loss, _, _ = flow_matching_loss(self.ddp, x, y, shift=cfg.shift, generator=self.gen)
                (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
        max_norm = cfg.clip_grad if cfg.clip_grad else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        finite = bool(torch.isfinite(total) and torch.isfinite(grad_norm))
        if finite:
            self.opt.step()
            self.ema.update(self.model)  # after optimizer.step(), once per optimizer step (T03)
            self.consecutive_skips = 0
        else:  # skip optimizer AND EMA (T16)
            self.skipped += 1
            self.consecutive_skips += 1
            log.warning("non-finite loss/grad at step %d: skipped (%d in a row)", self.step_count + 1,
                        self.consecutive_skips)
            if self.consecutive_skips >= cfg.max_skips:
                raise NonFiniteError(f"{self.consecutive_skips} consecutive non-finite steps; aborting")
        self.sched.step()
        self.step_count += 1
        return {"loss": total.item(), "grad_norm": grad_norm.item(), "lr": self.sched.get_last_lr()[0],
                "skipped": float(self.skipped)}


# ------------------------------------------------------------------------------------------------ latents
@torch.no_grad()
def encode_dataset(pipe_ae, images: torch.Tensor, batch: int = 500, align: str = "per_image") -> torch.Tensor:
    """Raw latent tokens ``(N, T, C)`` float32 of ``images (N, 3, H, W)`` in [-1, 1] through the frozen
    autoencoder (eval mode). ``per_image`` alignment: each latent is what the server's encoder returns for that
    image (for a batch of one the reference's ``batch`` mode gives the same)."""
    from svg.latent import to_tokens

    pipe_ae.eval()
    return torch.cat([to_tokens(pipe_ae.encode(x, align=align)) for x in images.split(batch)])


def latent_statistics(tokens: torch.Tensor):
    """Per-channel mean/std (1, 1, C) over all tokens of ``tokens (N, T, C)`` as an ``svg.latent.LatentNorm``."""
    from svg.latent import LatentNorm, LatentStatsAccumulator

    acc = LatentStatsAccumulator()
    for chunk in tokens.split(1000):
        acc.update(chunk)
    return LatentNorm(*acc.result())


def train_stage2(trainer: Stage2Trainer, batches, out: Path, sit_dir: Path | None = None) -> nn.Module:
    """Run ``trainer`` to ``cfg.steps`` drawing ``(x, y)`` from the iterator ``batches``; checkpoint to
    ``out/stage2_last.pt``; returns the EMA model."""
    cfg, d = trainer.cfg, trainer.d
    progress = Progress(cfg.steps, trainer.step_count, cfg.log_every, "stage2", enabled=d.main)
    while trainer.step_count < cfg.steps:
        logs = trainer.step(lambda i: next(batches))
        progress(trainer.step_count, **logs)
        if trainer.step_count % cfg.ckpt_every == 0 or trainer.step_count == cfg.steps:
            trainer.save(out / "stage2_last.pt")
    progress.close()
    return trainer.ema.model


def data_num_classes(data) -> int:
    """Classes in a dataset (``classes`` of an ImageFolder, else 1 + the largest label of a tensor dataset) or in a
    labels tensor ``(N,)``."""
    if isinstance(data, torch.Tensor):
        return int(data.max()) + 1
    if hasattr(data, "classes"):
        return len(data.classes)
    return int(data.tensors[1].max()) + 1


def load_latents(path: Path) -> dict:
    """A token cache written by ``python -m training.encode``: ``{"tokens": (N, T, C) f32, "labels": (N,) i64}``.

    Raises:
        ValueError: the file lacks ``tokens`` or ``labels`` (the message names the file and the keys it has).
    """
    cache = torch.load(path, map_location="cpu", weights_only=True)
    if not {"tokens", "labels"} <= set(cache):
        raise ValueError(f"{path} is not a token cache: keys {sorted(cache)}; expected 'tokens' and 'labels' "
                         "(write one with python -m training.encode)")
    return cache


def encode_to_cache(ae, dataset, path: Path | None, *, device, batch: int = 256, workers: int = 0) -> dict:
    """Encode every image of ``dataset`` (any ``(image, label)`` dataset) into raw latent tokens with per-image
    alignment; save ``{"tokens", "labels"}`` to ``path`` (None: don't save). Returns the dict."""
    from torch.utils.data import DataLoader

    from svg.latent import to_tokens

    ae.eval()
    tokens, labels = [], []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False):
            tokens.append(to_tokens(ae.encode(x.to(device), align="per_image")).float().cpu())
            labels.append(y.long())
    cache = {"tokens": torch.cat(tokens), "labels": torch.cat(labels)}
    if path is not None:
        save_checkpoint(path, cache)
    return cache


class TokenBatches:
    """Resumable stream of ``(normalised tokens (B, T, C), labels (B,))`` from a token cache."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, norm, batch_size: int, d: Dist, seed: int,
                 start_batch: int):
        from torch.utils.data import TensorDataset

        self.norm = norm
        self.batches = Batches(TensorDataset(tokens, labels), batch_size, d.rank, d.world, seed)
        self.it = self.batches.iterate(start_batch)

    def __iter__(self):
        return self

    def __next__(self):
        x, y = next(self.it)
        return self.norm.normalize(x.float()), y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.stage2",
                                description="SVG stage 2: flow-matching diffusion training")
    p.add_argument("--data", required=True, help="mnist.npz or an ImageFolder root")
    p.add_argument("--model-dir", required=True,
                   help="directory with autoencoder.safetensors and latent_stats.safetensors; sit.safetensors "
                        "(the EMA) is written here")
    p.add_argument("--preset", default="SVG-XL", help="SiT preset (svg.config.SIT_PRESETS)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    p.add_argument("--latents", default=None, help="token cache file (.pt); created on first use")
    p.add_argument("--steps", type=int, default=Stage2Config.steps)
    p.add_argument("--batch-size", type=int, default=Stage2Config.batch_size)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=Stage2Config.lr)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--cosine", action="store_true")
    p.add_argument("--ema-decay", type=float, default=Stage2Config.ema_decay)
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--seed", type=int, default=Stage2Config.seed)
    p.add_argument("--log-every", type=int, default=Stage2Config.log_every)
    p.add_argument("--ckpt-every", type=int, default=Stage2Config.ckpt_every)
    p.add_argument("--workers", type=int, default=4,
                   help="DataLoader processes for ImageFolder data (the batches are the same for any count)")
    p.add_argument("--num-classes", type=int, default=0,
                   help="class labels of the model (0 = the number of classes in --data; the null label is this "
                        "number); the exported config carries it")
    a = p.parse_args(argv)
    with usage_errors(p):
        cfg = Stage2Config(steps=a.steps, batch_size=a.batch_size, accum=a.accum, lr=a.lr, warmup=a.warmup,
                           cosine=a.cosine, ema_decay=a.ema_decay, clip_grad=a.clip_grad, bf16=a.bf16,
                           seed=a.seed, log_every=a.log_every, ckpt_every=a.ckpt_every)
        check_range("workers", a.workers, a.workers >= 0, ">= 0")
    with usage_errors(p, "--preset"):
        sit_cfg = sit_preset(a.preset)
    with usage_errors(p):
        check_range("num_classes", a.num_classes, a.num_classes >= 0, ">= 0 (0 = the number of classes in --data)")
    require_data(p, a.data)
    from svg.checkpoint import load_autoencoder, load_latent_stats  # after the cheap checks: exit 2 comes fast
    from svg.pipeline import AE_FILE, STATS_FILE
    from training.data import build_dataset
    from training.export import export_sit

    model_dir = Path(a.model_dir)
    require_model_files(p, model_dir, (AE_FILE, STATS_FILE))
    d = setup_distributed()
    out = Path(a.out)
    ae = load_autoencoder(model_dir / AE_FILE).to(d.device).eval()
    norm = load_latent_stats(model_dir / STATS_FILE).to(d.device)
    dataset = build_dataset(a.data, ae.config.dino.img_size, "train")
    cache = Path(a.latents) if a.latents else None
    cached = load_latents(cache) if cache is not None and cache.is_file() else None
    # The model is built for the classes it is trained on, so the exported config (and GET /models) says what was
    # trained: 10 for MNIST, not the preset's 1000 (the null label is num_classes).
    found = data_num_classes(cached["labels"] if cached else dataset)
    with usage_errors(p):
        check_range("num_classes", a.num_classes, a.num_classes == 0 or a.num_classes >= found,
                    f">= {found}, the classes in --data (0 = exactly those)")
    sit_cfg = dataclasses.replace(sit_cfg, num_classes=a.num_classes or found)
    trainer = Stage2Trainer(sit_cfg, cfg, d, preset=a.preset)
    with usage_errors(p, errors=(ResumeError,)):  # another preset / world / settings: refused (T13)
        resumed = trainer.resume(out / "stage2_last.pt")
    setup_logging(out / "stage2.log" if d.main else None)
    if resumed:
        log.info("stage2: resumed at step %d", trainer.step_count)
    start_batch = trainer.step_count * cfg.accum
    if cache is not None:
        if cached is None:
            cached = encode_to_cache(ae, dataset, cache if d.main else None, device=d.device, workers=a.workers)
        batches = TokenBatches(cached["tokens"], cached["labels"], norm.cpu(), cfg.batch_size, d, cfg.seed,
                               start_batch)
        trainer.check_data(batches.batches, start_batch)
    else:  # encode on the fly (reference behaviour at ImageNet scale)
        sampler = Batches(dataset, cfg.batch_size, d.rank, d.world, cfg.seed, a.workers)
        trainer.check_data(sampler, start_batch)
        raw = sampler.iterate(start_batch)

        def on_the_fly():
            from svg.latent import to_tokens

            for x, y in raw:
                with torch.no_grad():
                    z = to_tokens(ae.encode(x.to(d.device), align="batch"))
                yield norm.normalize(z), y

        batches = on_the_fly()
    ema = train_stage2(trainer, batches, out)
    if d.main:
        export_sit(ema, model_dir, {"preset": a.preset, "train_steps": str(trainer.step_count)})
        result = {"steps": trainer.step_count, "wall_s": round(trainer.elapsed(), 1),
                  "skipped_steps": trainer.skipped, "bit_exact": trainer.bit_exact,
                  "not_bit_exact_reasons": trainer.not_bit_exact}
        (out / "stage2_result.json").write_text(json.dumps(result, indent=2))
        log.info("stage2 done: %s", result)
    cleanup_distributed()


if __name__ == "__main__":
    main()

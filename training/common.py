"""Shared training plumbing: distributed setup, per-rank seeding, EMA, resumable checkpoints, batches, logging.

Used by every stage (``ssl``, ``stage1``, ``stage2``); nothing here knows about a particular model.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

log = logging.getLogger("training")


# ----------------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` in ``[0, world)``, its ``device``; ``world == 1`` without torchrun."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> Dist:
    """Join the process group that ``torchrun`` describes through ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (NCCL on
    CUDA, gloo on CPU); a plain ``python -m`` run is a world of one and creates no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with one value."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(global_seed: int, rank: int, world: int) -> int:
    """Per-rank seed for noise, timesteps and label dropout: ``global_seed * world + rank`` (reference
    ``train_svg.py``), so ranks draw different noise while model init (seeded with ``global_seed``) is shared."""
    return global_seed * world + rank


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers, so saved keys carry no ``module.`` or
    ``_orig_mod.`` prefix (cases T06)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def no_sync_unless(model: nn.Module, sync: bool):
    """Context for one micro-batch's forward *and* backward: DDP's ``no_sync`` on all but the last micro-batch of
    an accumulation window, so exactly one all-reduce happens per optimizer step (cases T15)."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


# ------------------------------------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point state (parameters and buffers) in fp32.

    ``update()`` must be called once per optimizer step, after ``optimizer.step()``, and never after a skipped
    non-finite step (cases T03, T16). The shadow is a full fp32 copy of the unwrapped model, so
    ``ema.model.state_dict()`` loads strictly into a fresh model (T06) and is what sampling uses.
    Source: reference ``train_svg.py`` (decay 0.9999, initialised as a copy, buffers included); fp32 shadow
    because a bf16 step of (1 - 0.9999)·Δ rounds to zero (T04).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay={decay} out of range; allowed: [0, 1]")
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).float().eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """shadow ← d·shadow + (1 − d)·θ for every floating tensor; integer buffers are copied.

        Raises:
            KeyError: the model has a tensor the EMA has no shadow for, or the reverse (both are named).
        """
        d = self.decay if decay is None else decay
        src = unwrap(model).state_dict()
        shadows = self.model.state_dict()
        if src.keys() != shadows.keys():  # case T05: every tracked tensor moves; a mismatch is a bug, never skipped
            live_only = sorted(src.keys() - shadows.keys())
            shadow_only = sorted(shadows.keys() - src.keys())
            raise KeyError(f"EMA and model disagree: live tensors without an EMA shadow {live_only[:5]}, EMA shadows "
                           f"without a live tensor {shadow_only[:5]}; build the EMA from the unwrapped model it "
                           f"tracks (training.common.unwrap), after every parameter exists")
        for name, shadow in shadows.items():
            value = src[name]
            if shadow.is_floating_point():
                # lerp: shadow + (1 − d)·(θ − shadow), one rounding per step (mul_ + add_ rounds twice)
                shadow.lerp_(value.detach().float(), 1.0 - d)
            else:
                shadow.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])


# ----------------------------------------------------------------------------------------------------- checkpoints
def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every RNG a training step reads: Python, NumPy, torch CPU (label dropout inside the model), CUDA, and
    named ``torch.Generator`` objects (noise / timesteps)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict | None, generators: dict[str, torch.Generator] | None = None) -> list[str]:
    """Restore what :func:`rng_state` saved, as far as this machine allows (case T14).

    Returns:
        Why the restore is not exact, one reason per RNG that could not be restored (empty when it is exact):
        no ``rng`` state in the checkpoint, a CUDA RNG state saved on a GPU and resumed without one, a named
        generator missing from the state, or a generator state of another device type. Those RNGs keep their fresh
        seeding; the caller warns and records the run as not bit-exact. Never raises ``KeyError``.
    """
    if not state:
        return ["the checkpoint holds no RNG state ('rng'): every RNG restarts from its seed"]
    reasons = []
    for key, restore in (("python", random.setstate), ("numpy", np.random.set_state), ("torch", torch.set_rng_state)):
        if key in state:
            restore(state[key])
        else:
            reasons.append(f"the checkpoint's RNG state has no {key!r} entry")
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        reasons.append("the CUDA RNG state was saved on a GPU and this run has none: CUDA draws are not restored")
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name not in saved:
            reasons.append(f"the checkpoint has no state for the {name!r} generator: it restarts from its seed")
            continue
        try:
            generator.set_state(saved[name])
        except RuntimeError as exc:  # e.g. a CUDA generator's state (16 bytes) into a CPU generator (5056 bytes)
            reasons.append(f"the {name!r} generator state does not fit this device's generator ({exc}); it "
                           "restarts from its seed")
    return reasons


def warn_not_exact(reasons: list[str], what: str) -> None:
    """Log once that a resumed run is not bit-exact, with every reason."""
    if reasons:
        log.warning("%s: this resume is NOT bit-exact (recorded in the checkpoint and the result file): %s",
                    what, "; ".join(reasons))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically (temp file + rename), so a kill mid-write leaves the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint dict at ``path`` or ``None`` when there is none (fresh start). RNG states hold NumPy
    objects, hence ``weights_only=False``: only load checkpoints you wrote."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class ResumeError(ValueError):
    """A checkpoint that this run must not continue: another preset/model config, world size or training
    setting. The message names every difference and how to proceed."""


def check_resume_settings(out: str | Path, saved: dict, current: dict, may_change: frozenset[str] | set[str],
                          flags: dict[str, str] | None = None) -> None:
    """Refuse to resume when a setting in ``current`` differs from the checkpoint's ``saved`` one (cases T13).

    ``saved``/``current`` map setting names to values (a stage config as a dict); names in ``may_change`` and names
    the checkpoint does not have (older files) are not compared. ``flags`` maps names to the CLI flag shown.

    Raises:
        ResumeError: listing every differing setting as ``name old → new``.
    """
    flags = flags or {}
    changed = [f"{flags.get(k, k)} {_fmt(saved[k])} → {_fmt(v)}" for k, v in current.items()
               if k not in may_change and k in saved and _fmt(saved[k]) != _fmt(v)]
    if changed:
        raise ResumeError(f"the checkpoint in {out} was trained with other settings: {', '.join(changed)}. "
                          f"Resume with the checkpoint's settings, or start a new run with another --out.")


def _fmt(value) -> str:
    return str(list(value)) if isinstance(value, (tuple, list)) else str(value)


# --------------------------------------------------------------------------------------------------------- batches
class SeededItems(Dataset):
    """A dataset whose item ``(epoch, index)`` is drawn with every RNG seeded from ``(seed, epoch, index)``.

    Random augmentation (e.g. a horizontal flip) then depends only on which item of which epoch is read: not on
    the worker that reads it, the number of workers, or what ran before in the process. So a run resumed mid-epoch
    sees exactly the items an uninterrupted run saw (case T14), and the caller's global RNGs (label dropout inside
    the model draws from torch's) are left untouched: Python, NumPy and torch CPU states are restored after each
    item.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item_seed = ((self.seed * 1_000_003 + epoch) * 2_147_483_647 + index) % 2**63
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class Batches:
    """Endless, resumable stream of ``(images, labels)`` batches for one rank.

    Epoch ``e`` uses the permutation drawn from ``seed + e`` (identical on all ranks); rank ``r`` takes every
    ``world``-th index of it, and the stream can restart at any ``(epoch, batch)`` position, so a resumed run sees
    exactly the batches an uninterrupted one would. In-memory ``TensorDataset``s are indexed directly;
    other datasets go through a ``DataLoader`` with ``workers`` processes, whose items are drawn by
    :class:`SeededItems` and whose own seed comes from a generator of ``seed + epoch`` (never the global RNG), so
    augmentation and the model's RNG draws match an uninterrupted run with any number of workers (case T14).
    :meth:`state` is the sampler state a checkpoint keeps; :meth:`state_mismatch` checks it on resume.
    """

    def __init__(self, dataset: Dataset, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} out of range; allowed: >= 1")
        if workers < 0:
            raise ValueError(f"workers={workers} out of range; allowed: >= 0")
        self.dataset, self.batch_size, self.rank, self.world = dataset, batch_size, rank, world
        self.seed, self.workers = seed, workers
        per_rank = len(dataset) // world
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"dataset of {len(dataset)} items is too small for batch_size={batch_size} "
                             f"on {world} rank(s)")

    def _indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        return perm[self.rank :: self.world][: self.batches_per_epoch * self.batch_size]

    def state(self, start_step: int) -> dict:
        """The sampler state at global batch ``start_step``: position plus everything that fixes the order."""
        epoch, offset = divmod(start_step, self.batches_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": offset, "seed": self.seed, "batch_size": self.batch_size,
                "rank": self.rank, "world": self.world, "dataset_len": len(self.dataset),
                "seeded_items": not isinstance(self.dataset, TensorDataset)}

    def state_mismatch(self, saved: dict | None, start_step: int) -> list[str]:
        """Why resuming at ``start_step`` would not continue the saved stream (empty when it does)."""
        if not saved:
            return ["the checkpoint holds no data-sampler state ('data'): the batch order after resume is not "
                    "verified"]
        now = self.state(start_step)
        return [f"data sampler {k} {saved.get(k)} → {v}" for k, v in now.items() if saved.get(k) != v]

    def iterate(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches from global batch number ``start_step`` on (batch ``k`` of the whole run)."""
        epoch, offset = divmod(start_step, self.batches_per_epoch)
        items = None if isinstance(self.dataset, TensorDataset) else SeededItems(self.dataset, self.seed)
        while True:
            idx = self._indices(epoch)[offset * self.batch_size :].view(-1, self.batch_size)
            if items is None:
                for rows in idx:
                    yield tuple(t[rows] for t in self.dataset.tensors)
            else:
                keys = [[(epoch, i) for i in rows] for rows in idx.tolist()]
                # The loader draws its workers' base seed from this generator, not from the global RNG.
                loader = DataLoader(items, batch_sampler=keys, num_workers=self.workers,
                                    pin_memory=torch.cuda.is_available(), persistent_workers=False,
                                    generator=torch.Generator().manual_seed(self.seed + epoch))
                yield from loader
            epoch, offset = epoch + 1, 0


# --------------------------------------------------------------------------------------------------------- logging
class Progress:
    """Training progress (rank 0 only): a tqdm bar with steps/s, ETA and the latest scalars when stderr is a terminal,
    and a plain log line every ``every`` steps (step, scalars, steps/s, ETA) in any case, so log files and CI logs
    read the same. On a terminal the log lines are printed above the bar instead of through it.

    Args:
        total_steps: the run's last step. start_step: the step it (re)starts from. every: steps between log lines.
        name: the stage name. enabled: False on ranks other than 0. tty: force the bar on/off (default: whether
            stderr is a terminal).
    """

    def __init__(self, total_steps: int, start_step: int, every: int, name: str, enabled: bool = True,
                 tty: bool | None = None):
        self.total, self.every, self.name, self.enabled = total_steps, max(1, every), name, enabled
        self.t0, self.s0 = time.perf_counter(), start_step
        tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1)

    def __call__(self, step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
        if step % self.every and step != self.total:
            return
        rate = (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        values = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        if self.bar is None:
            log.info("%s step %d/%d %s | %.2f steps/s | ETA %s", self.name, step, self.total, values, rate,
                     _fmt_seconds(eta))
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            log.info("%s step %d/%d %s | %.2f steps/s | ETA %s", self.name, step, self.total, values, rate,
                     _fmt_seconds(eta))

    def close(self) -> None:
        """End the bar (no-op without one)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def setup_logging(log_file: str | Path | None = None) -> None:
    """Log to stderr and optionally to ``log_file`` (CLI entry points only; library code never configures)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)

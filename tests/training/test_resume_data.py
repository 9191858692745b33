"""Mid-epoch resume on the on-the-fly data path (ImageFolder through a DataLoader, as stage 1 and stage 2 without
``--latents`` read ImageNet) equals an uninterrupted run (case T14: on resume the RNG restarted, so the first steps'
augmentation and label-drop masks differed; the cause was a DataLoader created lazily at resume drawing from the
global RNG). Where exactness is impossible the run says so: a warning, and the run recorded as not bit-exact."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.helpers import MICRO_SIT, make_trainer
from training.common import Batches, load_checkpoint, rng_state, set_rng_state
from training.data import build_dataset

STEPS, STOP, BATCH = 5, 2, 4  # 12 images / batch 4 = 3 batches per epoch: the resumed steps cross an epoch


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/train/<class>/<i>.png: 12 random (left-right asymmetric) images, so a flip changes the pixels."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(12):
        d = root / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _tokens(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) -> (B, 4, 4) tokens for MICRO_SIT (2x2 grid, 4 channels): average-pooled, channel-padded."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(images, 2)  # (B, 3, 2, 2)
    pooled = torch.cat([pooled, pooled[:, :1]], dim=1)  # (B, 4, 2, 2)
    return pooled.flatten(2).transpose(1, 2).contiguous()


def _train(tree, out, workers: int, steps: int, resume: bool):
    """Train MICRO_SIT on the folder through Batches (hflip on); returns (trainer, images seen per step)."""
    trainer = make_trainer(steps=steps, batch_size=BATCH, ema_decay=0.5)
    if resume:
        torch.manual_seed(999)  # a new process starts from other global RNG states
        assert trainer.resume(out / "ckpt.pt")
    sampler = Batches(build_dataset(tree, 32, "train"), BATCH, seed=trainer.cfg.seed, workers=workers)
    trainer.check_data(sampler, trainer.step_count)
    stream, seen = sampler.iterate(trainer.step_count), []

    def batch(_micro):
        x, y = next(stream)
        seen.append(x.clone())
        return _tokens(x), y

    while trainer.step_count < steps:
        trainer.step(batch)
    return trainer, seen


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_on_the_dataloader_path_is_exact(tree, tmp_path, workers):
    full, seen_full = _train(tree, tmp_path, workers, STEPS, resume=False)
    first, _ = _train(tree, tmp_path, workers, STOP, resume=False)
    first.save(tmp_path / "ckpt.pt")
    resumed, seen_resumed = _train(tree, tmp_path, workers, STEPS, resume=True)
    # The augmented images (random flips) of every resumed step, and then everything the steps drew (label-drop
    # masks, noise, t): equal weights and EMA after the last step.
    assert len(seen_resumed) == STEPS - STOP
    for k, (a, b) in enumerate(zip(seen_full[STOP:], seen_resumed)):
        assert torch.equal(a, b), f"images differ at resumed step {STOP + k + 1}"
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(full.ema.model.state_dict().items(), resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.bit_exact, resumed.not_bit_exact
    assert load_checkpoint(tmp_path / "ckpt.pt")["data"]["batch_in_epoch"] == STOP % 3


def test_flips_do_not_depend_on_the_worker_count_or_the_global_rng(tree):
    a = [x for x, _ in zip((b[0] for b in Batches(build_dataset(tree, 32), 4, seed=1).iterate(0)), range(3))]
    torch.manual_seed(123)
    b = [x for x, _ in zip((b[0] for b in Batches(build_dataset(tree, 32), 4, seed=1, workers=2).iterate(0)),
                           range(3))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    before = torch.get_rng_state()
    next(Batches(build_dataset(tree, 32), 4, seed=1).iterate(1))
    assert torch.equal(before, torch.get_rng_state()), "reading data must not move the model's RNG"


def test_a_checkpoint_without_rng_or_noise_state_resumes_with_a_warning(tmp_path, caplog):
    trainer = make_trainer()
    trainer.save(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    del ckpt["rng"][0]["generators"]["noise"]
    torch.save(ckpt, tmp_path / "no_noise.pt")
    del ckpt["rng"]
    torch.save(ckpt, tmp_path / "no_rng.pt")
    for name, reason in (("no_noise.pt", "no state for the 'noise' generator"), ("no_rng.pt", "no RNG state")):
        caplog.clear()
        resumed = make_trainer()
        with caplog.at_level(logging.WARNING, logger="training"):
            assert resumed.resume(tmp_path / name)  # not a bare KeyError
        assert not resumed.bit_exact and reason in resumed.not_bit_exact[0]
        assert any("NOT bit-exact" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
        resumed.save(tmp_path / "again.pt")  # the mark survives the next checkpoint
        assert load_checkpoint(tmp_path / "again.pt")["not_bit_exact"] == resumed.not_bit_exact


def test_a_cuda_rng_state_resumed_on_cpu_is_reported(monkeypatch):
    """A GPU run's checkpoint resumed on a CPU machine: the CUDA RNG state and a CUDA noise generator's state
    cannot be restored; both are named instead of being skipped silently or crashing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = rng_state({"noise": torch.Generator()})
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    state["generators"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state
    reasons = set_rng_state(state, {"noise": torch.Generator()})
    assert len(reasons) == 2
    assert "CUDA RNG state was saved on a GPU" in reasons[0] and "'noise' generator state does not fit" in reasons[1]


def test_a_changed_dataset_is_reported_not_silently_resumed(tree, tmp_path):
    trainer, _ = _train(tree, tmp_path, 0, STOP, resume=False)
    trainer.save(tmp_path / "ckpt.pt")
    resumed = make_trainer(steps=STEPS, batch_size=BATCH, ema_decay=0.5)
    assert resumed.resume(tmp_path / "ckpt.pt")
    smaller = torch.utils.data.Subset(build_dataset(tree, 32, "train"), range(8))
    resumed.check_data(Batches(smaller, BATCH, seed=resumed.cfg.seed), resumed.step_count)
    assert not resumed.bit_exact and "dataset_len 12 → 8" in " ".join(resumed.not_bit_exact)
    assert MICRO_SIT.num_classes == 10

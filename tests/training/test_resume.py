"""Resumed training equals uninterrupted training bit for bit (cases T01, T13) and checkpoints carry no wrapper
prefixes (T06)."""

from __future__ import annotations

import torch

from svg.sit import SiT
from tests.training.helpers import MICRO_SIT, batch_fn, make_trainer, micro_data
from training.common import load_checkpoint


def _run(trainer, data, steps):
    lrs = []
    for _ in range(steps):
        trainer.step(batch_fn(data, trainer.cfg.batch_size, trainer))
        lrs.append(trainer.sched.get_last_lr()[0])
    return lrs


def test_resume_equals_uninterrupted(tmp_path):
    data = micro_data()
    opts = dict(warmup=3, cosine=True, steps=8, ema_decay=0.9)  # warmup + cosine schedule (T13)
    full = make_trainer(**opts)
    lrs_full = _run(full, data, 8)

    first = make_trainer(**opts)
    _run(first, data, 5)
    first.save(tmp_path / "ckpt.pt")
    del first
    torch.manual_seed(999)  # a new process would start from other RNG states
    resumed = make_trainer(**opts)  # EMA is built before the checkpoint is loaded (T01)
    assert resumed.resume(tmp_path / "ckpt.pt")
    assert resumed.step_count == 5
    lrs_resumed = _run(resumed, data, 3)

    assert lrs_resumed == lrs_full[5:]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(full.ema.model.state_dict().items(), resumed.ema.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert a.dtype == torch.float32
    assert resumed.ema.num_updates == full.ema.num_updates == 8


def test_resume_refuses_other_world_size(tmp_path):
    trainer = make_trainer()
    trainer.save(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    ckpt["world"] = 2
    torch.save(ckpt, tmp_path / "c.pt")
    try:
        make_trainer().resume(tmp_path / "c.pt")
    except ValueError as e:
        assert "world=2" in str(e)
    else:
        raise AssertionError("resume with another world size must be refused")


def test_checkpoint_from_compiled_model_has_plain_keys(tmp_path):
    model = SiT(MICRO_SIT)
    compiled = torch.compile(model, backend="eager")  # adds the _orig_mod wrapper without a C++ build
    trainer = make_trainer()
    trainer.model, trainer.ddp = compiled, compiled
    trainer.save(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    SiT(MICRO_SIT).load_state_dict(ckpt["model"], strict=True)
    SiT(MICRO_SIT).load_state_dict(ckpt["ema"], strict=True)

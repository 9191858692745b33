"""EMA order and precision, non-finite step handling, label dropout (cases T03, T04, T09, T16)."""

from __future__ import annotations

import math

import pytest
import torch

from svg.sit import SiT
from tests.training.helpers import MICRO_SIT, batch_fn, make_trainer, micro_data
from training.common import EMA
from training.stage2 import NonFiniteError


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # the spy wraps it
def test_ema_updated_once_per_optimizer_step_after_step():
    data = micro_data()
    trainer = make_trainer(accum=4, ema_decay=0.5)
    calls, order = [], []
    orig_step, orig_update = trainer.opt.step, trainer.ema.update
    trainer.opt.step = lambda *a, **k: (order.append("opt"), orig_step(*a, **k))[1]

    def spy(model, decay=None):
        order.append("ema")
        calls.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        orig_update(model, decay)

    trainer.ema.update = spy
    expected = {k: v.clone() for k, v in trainer.ema.model.state_dict().items()}
    for _ in range(2):
        trainer.step(batch_fn(data, 8, trainer))
        theta = calls[-1]
        expected = {k: 0.5 * expected[k] + 0.5 * theta[k].float() for k in expected}
    assert order == ["opt", "ema", "opt", "ema"]
    for k, v in trainer.ema.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-7)
    # the weights the EMA saw are the weights after the optimizer step
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, calls[-1][k])


def test_ema_shadow_is_fp32_and_moves_with_bf16_weights():
    torch.manual_seed(0)
    model = SiT(MICRO_SIT).to(torch.bfloat16)
    ema = EMA(model, decay=0.9999)
    ref = {k: v.double() for k, v in ema.model.state_dict().items()}
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = torch.randn(4, MICRO_SIT.num_tokens, MICRO_SIT.in_channels, dtype=torch.bfloat16)
    for _ in range(20):
        out = model(x, torch.rand(4, dtype=torch.bfloat16), torch.randint(0, 10, (4,)))
        out.float().sub(1).square().mean().backward()  # target 1: the zero-initialised output gets a gradient
        opt.step()
        opt.zero_grad()
        ema.update(model)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                ref[k] = 0.9999 * ref[k] + 0.0001 * v.double()
    assert all(v.dtype == torch.float32 for v in ema.model.state_dict().values() if v.is_floating_point())
    moved = sum((ema.model.state_dict()[k] - start[k]).abs().sum().item() for k in start)
    assert moved > 0
    for k, v in ema.model.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=0, atol=1e-6)


def test_non_finite_step_skips_optimizer_and_ema():
    data = micro_data()
    trainer = make_trainer(clip_grad=1.0, max_skips=3)
    good = batch_fn(data, 8, trainer)
    for _ in range(2):
        trainer.step(good)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    updates = trainer.ema.num_updates

    def bad(i):
        x, y = good(i)
        return x * float("inf"), y

    logs = trainer.step(bad)
    assert not math.isfinite(logs["loss"])
    assert trainer.skipped == 1 and trainer.ema.num_updates == updates
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, weights[k]) and torch.isfinite(v).all()
    logs = trainer.step(good)
    assert math.isfinite(logs["grad_norm"]) and trainer.ema.num_updates == updates + 1
    with pytest.raises(NonFiniteError):
        for _ in range(3):
            trainer.step(bad)


def test_label_dropout_only_in_train_mode():
    torch.manual_seed(0)
    embedder = SiT(MICRO_SIT.__class__(**{**MICRO_SIT.to_dict(), "class_dropout_prob": 0.5})).y_embedder
    table = embedder.embedding_table.weight
    y = torch.randint(0, 10, (4000,))
    null = table[MICRO_SIT.num_classes]

    def dropped():
        out = embedder(y)
        return (out == null).all(dim=1).sum().item()

    embedder.eval()
    assert dropped() == 0
    embedder.train()
    n = dropped()
    assert 1800 < n < 2200  # binomial(4000, 0.5): ±6.3 sigma


def test_ema_raises_naming_a_live_parameter_without_a_shadow():
    """Case T05: a parameter added after the EMA was built (or a wrapper prefix) was skipped silently."""
    from training.common import EMA

    from .helpers import MICRO_SIT

    model = SiT(MICRO_SIT)
    ema = EMA(model, 0.5)
    model.extra_scale = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(KeyError, match=r"live tensors without an EMA shadow \['extra_scale'\]"):
        ema.update(model)
    del model.extra_scale
    ema.model.register_buffer("stale", torch.zeros(1))
    with pytest.raises(KeyError, match=r"EMA shadows without a live tensor \['stale'\]"):
        ema.update(model)

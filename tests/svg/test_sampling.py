"""Sampler behaviour on a small random SiT: guidance on all channels (B09), batching independence (B10, B33, B40),
exact step counts (B14), mixed batches, seeds and validation."""

from __future__ import annotations

import pytest
import torch

from svg.config import SiTConfig
from svg.sampling import (Guidance, GuidanceMode, RowPlan, Solver, derive_seed, evaluation_costs, initial_noise,
                          run_rows, sample, time_grid)
from svg.slots import SlotBatch, step
from svg.sit import SiT

T, C = 16, 392  # 4×4 token grid with the released channel count, so channel 391 exists (B09)
BATCH_ATOL = 1e-5  # CPU BLAS rounds the (B, hidden) conditioning matmuls differently for B = 1 and B > 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SiT(SiTConfig(input_size=4, in_channels=C, hidden_size=32, depth=1, num_heads=2)).eval()
    with torch.no_grad():  # the zero-initialised adaLN / output layers would make every velocity 0
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


def per_row(net):
    """The same SiT evaluated one row at a time: batch-invariant, to check the sampler's own arithmetic."""
    def call(x, t, y):
        return torch.cat([net(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])])
    return call


class Counter:
    def __init__(self, net):
        self.net, self.calls, self.rows, self.labels = net, 0, 0, []

    def __call__(self, x, t, y):
        self.calls += 1
        self.rows += x.shape[0]
        self.labels.append(y.tolist())
        return self.net(x, t, y)


def noise(seed: int, index: int = 0) -> torch.Tensor:
    return initial_noise(seed, index, (T, C))


# ---- B09: guidance combines all channels -------------------------------------------------------------------------

def test_guidance_applies_to_all_channels_including_the_last(model):
    z, t = noise(3), 0.3
    x = torch.stack([z, z])
    with torch.no_grad():
        out = model(x, torch.full((2,), t), torch.tensor([5, 1000]))[..., :C]
    v_c, v_u = out[0], out[1]
    assert (v_c - v_u)[:, C - 1].abs().max() > 1e-4  # cond ≠ uncond on channel 391
    results = {}
    for w in (1.0, 4.0):
        plan = RowPlan(z, 5, torch.tensor([t, 0.8]), Guidance(GuidanceMode.CONSTANT, w))
        results[w] = run_rows(per_row(model), [plan]).latents[0]
        expected = z + (0.8 - t) * (v_u + w * (v_c - v_u))
        assert torch.allclose(results[w], expected, atol=1e-5)
    assert (results[4.0] - results[1.0])[:, C - 1].abs().max() > 1e-4


# ---- B10 / B33 / B40: a row's result never depends on its neighbours ------------------------------------------

def test_two_requests_batched_equal_their_solo_runs_and_keep_their_own_labels(model):
    g = Guidance(GuidanceMode.CONSTANT, 4.0)
    counter = Counter(per_row(model))
    batched = sample(counter, torch.stack([noise(1), noise(2)]), torch.tensor([1, 2]), steps=3, guidance=g)
    assert counter.labels[0] == [1, 2, 1000, 1000]  # conds in order, then their twins; never [z; z]
    for i, (seed, label) in enumerate([(1, 1), (2, 2)]):
        solo = sample(per_row(model), noise(seed)[None], torch.tensor([label]), steps=3, guidance=g)
        assert torch.equal(batched.latents[i], solo.latents[0])  # bit-exact with a batch-invariant model
        real = sample(model, noise(seed)[None], torch.tensor([label]), steps=3, guidance=g)
        assert torch.allclose(batched.latents[i], real.latents[0], atol=BATCH_ATOL, rtol=0)
    assert not torch.allclose(batched.latents[0], batched.latents[1])


def test_seed_noise_is_independent_of_batch_and_image_zero_is_the_plain_seed():
    first = initial_noise(42, 0, (T, C))
    assert torch.equal(first, torch.randn((T, C), generator=torch.Generator().manual_seed(42)))
    batch_of_four = torch.stack([initial_noise(42, i, (T, C)) for i in range(4)])
    assert torch.equal(batch_of_four[0], first)
    assert torch.equal(batch_of_four[2], initial_noise(42, 2, (T, C)))
    assert len({derive_seed(42, i) for i in range(1000)}) == 1000
    assert all(0 <= derive_seed(2**63 - 1, i) < 2**63 for i in range(5))
    assert not torch.equal(batch_of_four[1], initial_noise(43, 0, (T, C)))
    assert derive_seed(42, 3) == 2437928618119813585  # golden value: the documented derivation never drifts


def test_image_zero_of_a_batch_matches_the_solo_request_and_merged_batches(model):
    g = Guidance(GuidanceMode.ZERO_INIT, 1.5)
    solo = sample(model, noise(42)[None], torch.tensor([7]), steps=4, guidance=g)
    four = torch.stack([initial_noise(42, i, (T, C)) for i in range(4)])
    batch = sample(model, four, torch.tensor([7, 7, 7, 7]), steps=4, guidance=g)
    merged = sample(per_row(model), torch.stack([noise(5), noise(42), noise(6), noise(7)]),
                    torch.tensor([3, 7, 9, 11]), steps=4, guidance=g)
    assert torch.allclose(batch.latents[0], solo.latents[0], atol=BATCH_ATOL, rtol=0)
    assert torch.equal(merged.latents[1], sample(per_row(model), noise(42)[None], torch.tensor([7]), steps=4,
                                                 guidance=g).latents[0])


@pytest.mark.parametrize("bad_seed", [-1, 2**63, 1.5, "7", True])
def test_bad_seeds_are_rejected_with_the_field_name(bad_seed):
    with pytest.raises(ValueError, match="seed"):
        initial_noise(bad_seed, 0, (T, C))


# ---- B14: exactly `steps` evaluations ------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3])
def test_euler_runs_exactly_steps_evaluations_and_heun_twice(model, steps):
    for solver, per_step in ((Solver.EULER, 1), (Solver.HEUN, 2)):
        counter = Counter(model)
        result = sample(counter, noise(0)[None], torch.tensor([1]), steps=steps, solver=solver)
        assert counter.calls == steps * per_step and result.nfe == steps * per_step
        assert result.model_rows == steps * per_step and torch.isfinite(result.latents).all()


@pytest.mark.parametrize("steps", [0, -1, 1001])
def test_invalid_step_counts_raise(model, steps):
    with pytest.raises(ValueError, match="steps"):
        sample(model, noise(0)[None], torch.tensor([1]), steps=steps)


# ---- mixed batches -----------------------------------------------------------------------------------------------

def _mixed(grid_of):
    return [
        RowPlan(noise(1), 1, grid_of(3, 0.15), Guidance(GuidanceMode.CONSTANT, 4.0)),
        RowPlan(noise(2), 2, grid_of(5, 1.0), Guidance(), Solver.HEUN),
        RowPlan(noise(3), 3, grid_of(4, 0.15), Guidance(GuidanceMode.ZERO_INIT, 1.5, 2, 0.5)),
        RowPlan(noise(4), 4, grid_of(6, 0.4), Guidance(GuidanceMode.INTERVAL, 3.0, interval=(0.2, 0.7))),
        RowPlan(noise(5), 5, grid_of(2, 0.15), Guidance(GuidanceMode.LINEAR, 2.0), Solver.HEUN),
        RowPlan(noise(6), 6, grid_of(5, 0.15), Guidance(GuidanceMode.LATE, 2.0), start=2),
    ]


def test_mixed_step_counts_guidance_and_solvers_batch_equal_solo(model):
    plans = _mixed(time_grid)
    batched = run_rows(per_row(model), plans)
    assert batched.calls == max(batched.nfe) == 10  # Heun 5 steps
    assert batched.model_rows == sum(sum(evaluation_costs(p.evaluations())) for p in plans)
    for k, plan in enumerate(plans):
        solo = run_rows(per_row(model), [plan])
        assert torch.equal(batched.latents[k], solo.latents[0]) and batched.nfe[k] == solo.nfe[0]


def test_late_joiner_in_another_slot_matches_its_solo_run(model):
    first, joiner = _mixed(time_grid)[:2]
    slots = SlotBatch(4, T, C, max_evals=10)
    slots.admit(2, first)
    step(per_row(model), slots, slots.layout([2]))
    slots.advance([2])
    slots.admit(0, joiner)  # joins mid-flight, in a lower slot
    active = [2, 0]
    while active:
        step(per_row(model), slots, torch.cat([slots.layout(active), slots.padding(3)], 1))  # padding is inert
        done = slots.advance(active)
        active = [s for s in active if s not in done]
    assert torch.equal(slots.retire(0), run_rows(per_row(model), [joiner]).latents[0])
    assert torch.equal(slots.retire(2), run_rows(per_row(model), [first]).latents[0])
    assert slots.occupied() == []
    with pytest.raises(ValueError, match="slot=2"):
        slots.retire(2)


def test_unconditional_twins_only_where_guidance_is_active(model):
    interval = RowPlan(noise(1), 1, time_grid(6, 1.0), Guidance(GuidanceMode.INTERVAL, 3.0, interval=(0.3, 0.6)))
    plain = RowPlan(noise(2), 2, time_grid(6, 1.0), Guidance())
    counter = Counter(model)
    result = run_rows(counter, [interval, plain])
    # grid 0, 1/6, ..., 5/6: t in [0.3, 0.6] for t = 2/6 and 3/6 only
    assert [len(labels) for labels in counter.labels] == [2, 2, 3, 3, 2, 2]
    assert evaluation_costs(interval.evaluations()) == [1, 1, 2, 2, 1, 1]
    assert result.model_rows == 14 and result.nfe == [6, 6]


def test_zero_init_first_step_keeps_the_noise_and_uses_only_the_null_row(model):
    plan = RowPlan(noise(9), 4, time_grid(4, 0.15), Guidance(GuidanceMode.ZERO_INIT, 1.5))
    first, second = plan.evaluations()[:2]
    assert (first.label, first.twin, second.label, second.twin) == (1000, False, 4, True)
    assert evaluation_costs(plan.evaluations()) == [1, 2, 2, 2]  # cfg_star's first step runs one row
    counter = Counter(model)
    slots = SlotBatch(1, T, C, max_evals=4)
    slots.admit(0, plan)
    step(counter, slots, slots.layout([0]))
    assert counter.labels == [[1000]] and torch.equal(slots.x[0], noise(9))


def test_guidance_schedules():
    assert Guidance(GuidanceMode.LATE, 3.0).scale_at(1, 4, 0.5) == 1.0
    assert Guidance(GuidanceMode.LATE, 3.0).scale_at(2, 4, 0.5) == 3.0
    assert Guidance(GuidanceMode.LINEAR, 3.0).scale_at(1, 4, 0.5) == 2.0
    assert Guidance(GuidanceMode.EARLY, 3.0, interval=(0.6, 1.0)).scale_at(0, 4, 0.6) == 1.0
    assert Guidance(GuidanceMode.EARLY, 3.0, interval=(0.6, 1.0)).scale_at(0, 4, 0.7) == 3.0
    assert Guidance(GuidanceMode.CONSTANT, 1.0).scale_at(0, 4, 0.0) == 1.0  # no twin at w = 1
    assert Guidance("zero_init", 2.0, 3).zero_init_active(2) and not Guidance("zero_init", 2.0, 3).zero_init_active(3)


@pytest.mark.parametrize("kwargs, field", [
    ({"mode": "cfg_star-1-0"}, "guidance.mode"),
    ({"mode": "constant", "scale": -1.0}, "guidance.scale"),
    ({"mode": "constant", "scale": float("nan")}, "guidance.scale"),
    ({"mode": "none", "scale": 4.0}, "guidance.scale"),
    ({"mode": "zero_init", "scale": 2.0, "zero_init_steps": -1}, "guidance.zero_init_steps"),
    ({"mode": "zero_init", "scale": 2.0, "zero_init_ratio": 11.0}, "guidance.zero_init_ratio"),
    ({"mode": "interval", "scale": 2.0, "interval": (0.7, 0.2)}, "guidance.interval"),
])
def test_guidance_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Guidance(**kwargs)


def test_trajectory_and_sample_validation(model):
    grid = time_grid(3, 0.15)
    for label in (-1, 1000, 1001):  # 1000 is the null class: internal to guidance only (B12)
        with pytest.raises(ValueError, match="label"):
            RowPlan(noise(0), label, grid, Guidance(GuidanceMode.CONSTANT, 2.0))
    with pytest.raises(ValueError, match="solver"):
        RowPlan(noise(0), 1, grid, solver="dpm")
    with pytest.raises(ValueError, match="y.shape"):
        sample(model, noise(0)[None], torch.tensor([1, 2]), steps=2)
    with pytest.raises(ValueError, match="plans"):
        run_rows(model, [RowPlan(noise(0), 1, grid), RowPlan(torch.zeros(T, 8), 1, grid)])
    done = run_rows(model, [RowPlan(noise(0), 1, grid, start=3)])  # nothing to run: no call
    assert done.calls == 0 and torch.equal(done.latents[0], noise(0))

"""Editing and interpolation: masks, SDEdit start (B15), strength 0 and 1, inversion, the re-imposed unedited
region, and lerp / slerp / vp noise interpolation (B35)."""

from __future__ import annotations

import math

import pytest
import torch

from svg.config import SiTConfig
from svg.editing import (box_mask, edit, edit_trajectory, editable_region, interpolate, interpolate_noise,
                         inversion_trajectory, sdedit_start, soften_mask)
from svg.sampling import Guidance, GuidanceMode, initial_noise, run_rows, sample
from svg.sit import SiT

T, C = 16, 392


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SiT(SiTConfig(input_size=4, in_channels=C, hidden_size=32, depth=1, num_heads=2)).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


def source(b: int = 2) -> torch.Tensor:
    return torch.randn(b, T, C, generator=torch.Generator().manual_seed(11))


# ---- masks --------------------------------------------------------------------------------------------------------

def test_soften_mask_blurs_then_averages_onto_the_token_grid():
    mask = box_mask((0, 0, 32, 64), height=64, width=64)  # left half of a 64 px image
    hard = soften_mask(mask, 0.0, (4, 4))
    assert hard.shape == (1, 16, 1) and hard.dtype == torch.float32
    grid = hard.view(4, 4)
    assert torch.equal(grid[:, :2], torch.ones(4, 2)) and torch.equal(grid[:, 2:], torch.zeros(4, 2))
    soft = soften_mask(mask, 6.0, (4, 4)).view(4, 4)
    assert bool(((soft >= 0) & (soft <= 1)).all())
    assert 0.5 < soft[0, 1] < 1.0 and 0.0 < soft[0, 2] < 0.5  # the band at the edge is soft
    assert soft[0, 0] > soft[0, 1] and soft[0, 2] > soft[0, 3]
    assert torch.allclose(soft.sum(), grid.sum(), atol=0.2)  # blurring moves mass, it does not create it
    big = soften_mask(mask, 1000.0, (4, 4))  # a kernel larger than the image is capped, not an error
    assert torch.isfinite(big).all()
    outside = editable_region(soft.view(1, 16, 1), "outside")
    assert torch.allclose(outside + soft.view(1, 16, 1), torch.ones(1, 16, 1))


@pytest.mark.parametrize("call, field", [
    (lambda: soften_mask(torch.ones(1, 3, 8, 8), 1.0, (4, 4)), "mask.shape"),
    (lambda: soften_mask(torch.full((1, 1, 8, 8), 2.0), 1.0, (4, 4)), "mask values"),
    (lambda: soften_mask(torch.ones(1, 1, 8, 8), -1.0, (4, 4)), "sigma_px"),
    (lambda: box_mask((5, 5, 5, 9), 16, 16), "box"),
    (lambda: box_mask((0, 0, 17, 9), 16, 16), "box"),
    (lambda: editable_region(torch.ones(1, 4, 1), "both"), "mask_mode"),
])
def test_mask_validation_names_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


# ---- SDEdit -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, strength, runs", [
    (1, 0.8, 1), (10, 0.05, 1), (10, 0.0, 0), (10, 1.0, 10), (10, 0.3, 3), (10, 0.31, 4), (25, 0.5, 13),
])
def test_sdedit_start_runs_at_least_one_step_for_any_positive_strength(steps, strength, runs):
    assert steps - sdedit_start(steps, strength) == runs


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_strength_is_rejected(strength):
    with pytest.raises(ValueError, match="strength"):
        sdedit_start(10, strength)


@pytest.mark.parametrize("steps, strength", [(1, 0.8), (10, 0.05)])
def test_small_edits_run_and_count_their_steps(model, steps, strength):
    result = edit(model, source(), torch.tensor([1, 2]), strength=strength, steps=steps)
    assert result.nfe == 1 and torch.isfinite(result.latents).all()


def test_strength_zero_returns_the_input_exactly_without_evaluations(model):
    x = source()
    calls = []
    result = edit(lambda *a: calls.append(1) or model(*a), x, torch.tensor([1, 2]), strength=0.0, steps=10,
                  inversion=True)
    assert torch.equal(result.latents, x) and result.nfe == 0 and result.model_rows == 0 and not calls
    tr = edit_trajectory(x[0], 1, strength=0.0, steps=10)
    assert tr.evaluations() == [] and torch.equal(tr.z, x[0])


def test_strength_one_without_mask_is_generation_from_the_same_seed(model):
    g = Guidance(GuidanceMode.CONSTANT, 3.0)
    edited = edit(model, source(1), torch.tensor([5]), strength=1.0, steps=4, guidance=g, seed=9)
    generated = sample(model, initial_noise(9, 0, (T, C))[None], torch.tensor([5]), steps=4, guidance=g)
    assert torch.equal(edited.latents, generated.latents) and edited.nfe == 4


def test_random_sdedit_starts_on_the_noised_path(model):
    x = source(1)[0]
    tr = edit_trajectory(x, 3, strength=0.5, steps=10, shift=1.0, seed=4)
    assert tr.start == 5 and float(tr.grid[tr.start]) == 0.5
    assert torch.allclose(tr.z, 0.5 * initial_noise(4, 0, (T, C)) + 0.5 * x)


def test_masked_edit_keeps_the_unedited_region_exactly_and_changes_the_rest(model):
    x = source()
    soft = soften_mask(box_mask((0, 0, 32, 64), 64, 64), 4.0, (4, 4))  # (1, 16, 1), left half marked
    for mode in ("inside", "outside"):
        editable = editable_region(soft, mode).expand(2, -1, -1)
        result = edit(model, x, torch.tensor([7, 8]), strength=0.7, steps=6, editable=editable, seed=3)
        frozen = editable[0, :, 0] == 0  # fully unedited tokens
        free = editable[0, :, 0] == 1
        assert frozen.any() and free.any()
        assert torch.equal(result.latents[:, frozen], x[:, frozen])  # t = 1 lands exactly on the source
        assert (result.latents[:, free] - x[:, free]).abs().max() > 0.1
    inverted = edit(model, x, torch.tensor([7, 8]), strength=0.7, steps=6, inversion=True,
                    editable=editable_region(soft, "inside").expand(2, -1, -1))
    frozen = soft[0, :, 0] == 0
    assert torch.allclose(inverted.latents[:, frozen], x[:, frozen], atol=1e-5)


def test_mask_fade_changes_only_the_soft_band(model):
    x = source(1)[0]
    soft = soften_mask(box_mask((0, 0, 32, 64), 64, 64), 8.0, (4, 4))[0]  # (16, 1)
    outs = {}
    for fade in (0.0, 3.0):
        plan = edit_trajectory(x, 7, strength=0.7, steps=6, editable=soft, mask_fade=fade, seed=3)
        outs[fade] = run_rows(model, [plan]).latents[0]
    band = (soft[:, 0] > 0) & (soft[:, 0] < 1)
    fixed = (soft[:, 0] == 0) | (soft[:, 0] == 1)
    assert band.any() and (outs[0.0][band] - outs[3.0][band]).abs().max() > 1e-4
    assert torch.allclose(outs[0.0][fixed], outs[3.0][fixed], atol=1e-6)


def test_inversion_reconstructs_the_source_far_better_than_fresh_noise(model):
    x, labels = source(), torch.tensor([3, 4])
    errors = []
    for steps in (5, 20):
        inverted = edit(model, x, labels, strength=0.6, steps=steps, shift=1.0, inversion=True, source_labels=labels)
        errors.append((inverted.latents - x).pow(2).mean().item())
        assert inverted.nfe == 2 * (steps - inverted.start)  # inversion + edit
    fresh = edit(model, x, labels, strength=0.6, steps=20, shift=1.0)
    assert errors[1] < errors[0] / 4 and errors[1] < (fresh.latents - x).pow(2).mean().item() / 1000
    plan = inversion_trajectory(x[0], steps=4, start=1, shift=1.0)
    evaluations = plan.evaluations()
    assert evaluations[0].t == 1.0 and evaluations[0].label == 1000  # starts at the data end, unconditional
    assert evaluations[-1].t_after == 0.25 and run_rows(model, [plan]).nfe == [3]


def test_edit_argument_validation(model):
    x = source()
    with pytest.raises(ValueError, match="editable.shape"):
        edit_trajectory(x[0], 1, strength=0.5, steps=4, editable=torch.ones(T))
    with pytest.raises(ValueError, match="start_latent.shape"):
        edit_trajectory(x[0], 1, strength=0.5, steps=4, start_latent=torch.ones(T, 5))
    with pytest.raises(ValueError, match="mask_fade"):
        edit_trajectory(x[0], 1, strength=0.5, steps=4, editable=torch.ones(T, 1), mask_fade=-1.0)
    with pytest.raises(ValueError, match="label"):
        edit(model, x, torch.tensor([1000, 1]), strength=0.5, steps=4)


# ---- interpolation ------------------------------------------------------------------------------------------------

def test_interpolation_modes_and_exact_endpoints():
    a, b = initial_noise(1, 0, (T, C)), initial_noise(2, 0, (T, C))
    for mode in ("lerp", "slerp", "vp"):
        assert torch.equal(interpolate_noise(a, b, 0.0, mode), a)
        assert torch.equal(interpolate_noise(a, b, 1.0, mode), b)
    assert torch.allclose(interpolate_noise(a, b, 0.25, "lerp"), 0.75 * a + 0.25 * b, atol=1e-6)
    assert torch.allclose(interpolate_noise(a, b, 0.5, "vp"), (0.5 * a + 0.5 * b) / math.sqrt(0.5 + 1e-8), atol=1e-6)
    mid = interpolate_noise(a, b, 0.5, "slerp")
    theta = torch.acos((a * b).sum() / (a.norm() * b.norm()))
    expected = (torch.sin(0.5 * theta) / torch.sin(theta)) * (a + b)
    assert torch.allclose(mid, expected, atol=1e-5)
    assert abs(mid.norm() / a.norm() - 1) < 0.05 and interpolate_noise(a, b, 0.5, "lerp").norm() < 0.8 * a.norm()
    batched = interpolate_noise(torch.stack([a, a]), torch.stack([b, a]), 0.3, "slerp")
    assert torch.allclose(batched[0], interpolate_noise(a, b, 0.3, "slerp")) and torch.equal(batched[1], a)


def test_slerp_of_identical_or_parallel_noises_has_no_nan():
    a = initial_noise(7, 0, (T, C))
    for r in (0.0, 0.3, 0.5, 1.0):
        assert torch.equal(interpolate_noise(a, a.clone(), r, "slerp"), a)
    nearly = a * (1 + 1e-7)
    for other in (nearly, 2.0 * a, -a, torch.zeros_like(a)):
        out = interpolate_noise(a, other, 0.5, "slerp")
        assert torch.isfinite(out).all()
        assert torch.allclose(out, torch.lerp(a, other, 0.5))


@pytest.mark.parametrize("call, field", [
    (lambda a: interpolate_noise(a, a[:, :5], 0.5), "z_a.shape"),
    (lambda a: interpolate_noise(a, a, 1.5), "r="),
    (lambda a: interpolate_noise(a, a, 0.5, "nonlinear"), "mode"),
])
def test_interpolation_validation(call, field):
    with pytest.raises(ValueError, match=field):
        call(torch.zeros(T, C))


def test_interpolating_a_seed_with_itself_gives_that_seeds_generation(model):
    g = Guidance(GuidanceMode.CONSTANT, 4.0)
    result = interpolate(model, 7, 7, 7, [0.0, 0.5, 1.0], steps=3, guidance=g, mode="slerp", shape=(T, C))
    solo = sample(model, initial_noise(7, 0, (T, C))[None], torch.tensor([7]), steps=3, guidance=g)
    assert result.latents.shape == (3, T, C) and torch.isfinite(result.latents).all()
    for i in range(3):  # the model's batch-size rounding only (see test_sampling.BATCH_ATOL)
        assert torch.allclose(result.latents[i], solo.latents[0], atol=1e-5, rtol=0)
    noises = [interpolate_noise(initial_noise(7, 0, (T, C)), initial_noise(7, 0, (T, C)), r, "slerp")
              for r in (0.0, 0.5, 1.0)]
    assert all(torch.equal(n, initial_noise(7, 0, (T, C))) for n in noises)  # the start noise is exact
    with pytest.raises(ValueError, match="ratios"):
        interpolate(model, 7, 1, 2, [], steps=3, shape=(T, C))

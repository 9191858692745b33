"""The sampler's update rules against independent references: closed-form ODE solutions and hand-written formulas.

The model is a linear velocity field whose flow is known exactly (:class:`LinearField`):

    v(x, t, y) = λ ⊙ x + b_y + t·c_y        (per channel; y = num_classes is the null label)

with the exact solution, per channel, x(t) = α + β·t + (x₀ − α)·e^{λt}, β = −c/λ, α = (β − b)/λ. Everything here
goes through the public API only (``svg.sampling.sample`` and ``svg.editing.edit``) and re-derives each formula in
float64 from its specification (docs/sampling.md, svg_reference.md §5), never from the sampler's internals, so the
same tests validate any implementation of the step (the solo loop, the slot-batch step).

What a wrong implementation would fail: Euler not first order or Heun not second order (the error ratio under step
halving), a Heun corrector that is not the trapezoid, any guidance mode's scale schedule, the unconditional twin
using the wrong label, a row's label swapped with another's, the timestep shift grid, the edit's re-imposition of the
unedited region.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svg.editing import edit
from svg.sampling import Guidance, GuidanceMode, initial_noise, sample, shift_time

NUM_CLASSES = 5  # the null label is 5
T, C = 3, 4


class LinearField(nn.Module):
    """v = λ ⊙ x + b[y] + t·c[y], with ``SiT.forward``'s call signature ``(x (B,T,C), t (B,), y (B,))``.

    ``learn_sigma`` appends C channels of garbage, as the SiT appends its variance channels: the sampler must use
    the first C only. Counts calls and rows so tests can check NFE and the unconditional-twin budget.
    """

    def __init__(self, seed: int = 0, learn_sigma: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # λ in [-1.5, -0.5]: a contracting flow, away from 0 so that α, β are well defined.
        self.lam = nn.Parameter(-0.5 - torch.rand(C, generator=g, dtype=torch.float64))
        # Class offsets far apart (the null row included), so that any label mix-up moves the result by O(1).
        self.b = nn.Parameter(3.0 * torch.randn(NUM_CLASSES + 1, C, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(2.0 * torch.randn(NUM_CLASSES + 1, C, generator=g, dtype=torch.float64))
        self.learn_sigma = learn_sigma
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 3 and t.shape == y.shape == x.shape[:1] and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) <= NUM_CLASSES
        self.calls += 1
        self.rows += x.shape[0]
        v = self.velocity64(x.double(), t.double(), y).to(x.dtype)
        if self.learn_sigma:
            v = torch.cat([v, torch.full_like(v, 1e6)], dim=-1)
        return v

    def velocity64(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        """float64 reference velocity; x (B, T, C), t (B,) or a float, y (B,)."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1)
        with torch.no_grad():
            return self.lam * x + self.b[y][:, None, :] + t * self.c[y][:, None, :]

    def exact(self, x0: torch.Tensor, y: torch.Tensor, b: torch.Tensor | None = None,
              c: torch.Tensor | None = None) -> torch.Tensor:
        """Closed-form x(1) from x(0) = x0 (B, T, C); ``b``/``c`` (B, C) override the class offsets (guidance)."""
        with torch.no_grad():
            b = self.b[y] if b is None else b
            c = self.c[y] if c is None else c
            lam = self.lam
            beta = -c / lam
            alpha = (beta - b) / lam
            return alpha[:, None] + beta[:, None] + (x0.double() - alpha[:, None]) * torch.exp(lam)


def shifted_grid(steps: int, shift: float) -> list[float]:
    """The sampling grid written from its definition: u_i = i/N, t_i = s·u/(1 + (s − 1)·u) (identity for s <= 0)."""
    out = []
    for i in range(steps + 1):
        u = i / steps
        out.append(u if shift <= 0 else shift * u / (1 + (shift - 1) * u))
    return out


def scale_schedule(mode: str, w: float, i: int, steps: int, t: float, interval=(0.0, 1.0)) -> float:
    """Each guidance mode's scale at evaluation time t of step i, from docs/sampling.md (reference ``cfg_mode``)."""
    if mode == "none":
        return 1.0
    if mode in ("constant", "zero_init"):
        return w
    if mode == "interval":
        return w if interval[0] <= t <= interval[1] else 1.0
    if mode == "late":
        return w if (i + 1) / steps > 0.5 else 1.0
    if mode == "linear":
        return 1.0 + (w - 1.0) * (i + 1) / steps
    if mode == "early":
        return w if t > interval[0] else 1.0
    raise AssertionError(mode)


def reference_sample(field: LinearField, x0: torch.Tensor, y: torch.Tensor, *, steps: int, shift: float,
                     solver: str = "euler", mode: str = "none", w: float = 1.0, interval=(0.0, 1.0),
                     zero_init_steps: int = 0, zero_init_ratio: float = 0.0) -> torch.Tensor:
    """Hand-written float64 Euler / Heun (trapezoid) with classifier-free guidance ``v_u + w·(v_c − v_u)``."""
    grid = shifted_grid(steps, shift)
    null = torch.full_like(y, NUM_CLASSES)

    def guided(z, t, i):
        v_c, v_u = field.velocity64(z, t, y), field.velocity64(z, t, null)
        if mode == "zero_init" and i < zero_init_steps:
            return -zero_init_ratio * v_u
        s = scale_schedule(mode, w, i, steps, t, interval)
        return v_u + s * (v_c - v_u)

    z = x0.double()
    for i in range(steps):
        t0, t1 = grid[i], grid[i + 1]
        v0 = guided(z, t0, i)
        if solver == "euler":
            z = z + (t1 - t0) * v0
        else:
            v1 = guided(z + (t1 - t0) * v0, t1, i)
            z = z + (t1 - t0) * 0.5 * (v0 + v1)
    return z


def start_noise(batch: int) -> torch.Tensor:
    return torch.stack([initial_noise(11, i, (T, C)) for i in range(batch)])


LABELS = torch.tensor([0, 3, 1, 4])


# ----------------------------------------------------------------------------------------------------------------
# Order of convergence against the exact flow


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_solver_converges_to_the_exact_flow_at_its_order(solver, order, shift):
    field = LinearField(seed=1)
    x0 = start_noise(len(LABELS))
    exact = field.exact(x0, LABELS)
    errors = []
    for steps in (8, 16, 32):
        out = sample(field, x0, LABELS, steps=steps, shift=shift, solver=solver, num_classes=NUM_CLASSES)
        errors.append(float((out.latents.double() - exact).abs().max()))
    ratios = [errors[k] / errors[k + 1] for k in range(2)]
    # Halving the step divides the global error by 2^order (asymptotically); a first-order "Heun" gives ~2.
    for r in ratios:
        assert 2 ** order * 0.75 < r < 2 ** order * 1.35, (solver, shift, errors, ratios)
    assert errors[-1] < (0.1 if order == 1 else 5e-3), errors


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("shift", [0.0, 0.15, 0.4])
def test_one_trajectory_matches_the_hand_written_solver_step_by_step(solver, shift):
    field = LinearField(seed=2, learn_sigma=True)
    x0 = start_noise(len(LABELS))
    out = sample(field, x0, LABELS, steps=5, shift=shift, solver=solver, num_classes=NUM_CLASSES)
    ref = reference_sample(field, x0, LABELS, steps=5, shift=shift, solver=solver)
    torch.testing.assert_close(out.latents.double(), ref, rtol=1e-5, atol=1e-5)
    assert out.nfe == (5 if solver == "euler" else 10)
    assert field.calls == out.nfe and out.model_rows == len(LABELS) * out.nfe  # unguided: no twins


def test_the_shifted_time_grid_is_the_one_integrated():
    # v = c_y·t only (λ → 0 is not allowed, so use x-independent offsets by comparing two runs): Euler then sums
    # c·t_i·(t_{i+1} − t_i) over the grid, which pins every grid point that the solver really used.
    field = LinearField(seed=3)
    with torch.no_grad():
        field.lam.fill_(-1e-30)  # effectively x-independent while keeping the class offsets
        field.b.zero_()
    x0 = torch.zeros(1, T, C)
    y = torch.tensor([2])
    for shift in (0.0, 0.15, 0.4, 2.0):
        grid = shifted_grid(10, shift)
        expected = sum(grid[i] * (grid[i + 1] - grid[i]) for i in range(10)) * field.c[2].double()
        out = sample(field, x0, y, steps=10, shift=shift, num_classes=NUM_CLASSES)
        torch.testing.assert_close(out.t_grid.double(), torch.tensor(grid, dtype=torch.float64), rtol=0, atol=1e-7)
        torch.testing.assert_close(out.latents[0, 0].double(), expected, rtol=1e-5, atol=1e-6)
    # The shift really matters for this field: s = 0.15 and no shift give clearly different results.
    a = sample(field, x0, y, steps=10, shift=0.15, num_classes=NUM_CLASSES).latents
    b = sample(field, x0, y, steps=10, shift=0.0, num_classes=NUM_CLASSES).latents
    assert float((a - b).abs().max()) > 0.05


def test_shift_time_on_floats_and_tensors_is_the_formula():
    # The scalar path (used for single times) and the tensor path (the grid) both follow s·t / (1 + (s − 1)·t).
    for s in (0.15, 0.4, 1.0, 3.0):
        for t in (0.0, 0.1, 0.5, 0.9, 1.0):
            want = s * t / (1 + (s - 1) * t)
            assert shift_time(t, s) == pytest.approx(want, rel=1e-12, abs=1e-15)
            assert float(shift_time(torch.tensor(t, dtype=torch.float64), s)) == pytest.approx(want, rel=1e-12,
                                                                                                  abs=1e-15)
    assert shift_time(0.3, 0.0) == 0.3 and shift_time(0.3, -1.0) == 0.3  # s <= 0: no shift
    assert shift_time(1.0, 1e-20) == 1.0  # the 0/0 at t = 1 for a tiny s is the limit 1


# ----------------------------------------------------------------------------------------------------------------
# Guidance


GUIDANCE_CASES = [
    ("none", Guidance(), {}),
    ("constant", Guidance(GuidanceMode.CONSTANT, scale=3.0), {}),
    ("constant", Guidance(GuidanceMode.CONSTANT, scale=0.0), {}),  # w = 0: the unconditional flow
    ("interval", Guidance(GuidanceMode.INTERVAL, scale=2.5, interval=(0.23, 0.71)), {"interval": (0.23, 0.71)}),
    ("late", Guidance(GuidanceMode.LATE, scale=4.0), {}),
    ("linear", Guidance(GuidanceMode.LINEAR, scale=4.0), {}),
    ("early", Guidance(GuidanceMode.EARLY, scale=3.0, interval=(0.37, 1.0)), {"interval": (0.37, 1.0)}),
    ("zero_init", Guidance(GuidanceMode.ZERO_INIT, scale=2.0, zero_init_steps=2, zero_init_ratio=0.5),
     {"zero_init_steps": 2, "zero_init_ratio": 0.5}),
    ("zero_init", Guidance(GuidanceMode.ZERO_INIT, scale=2.0, zero_init_steps=1, zero_init_ratio=0.0),
     {"zero_init_steps": 1, "zero_init_ratio": 0.0}),  # cfg_star-1-0, the reference FID script's default
]


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("mode,guidance,extra", GUIDANCE_CASES,
                         ids=[f"{m}-{g.scale:g}-{g.zero_init_ratio:g}" for m, g, _ in GUIDANCE_CASES])
def test_guidance_mode_matches_its_formula(mode, guidance, extra, solver):
    field = LinearField(seed=4)
    x0 = start_noise(len(LABELS))
    out = sample(field, x0, LABELS, steps=6, shift=0.4, solver=solver, guidance=guidance, num_classes=NUM_CLASSES)
    ref = reference_sample(field, x0, LABELS, steps=6, shift=0.4, solver=solver, mode=mode, w=guidance.scale,
                           **extra)
    torch.testing.assert_close(out.latents.double(), ref, rtol=1e-5, atol=1e-5)


def test_guidance_changes_the_result_by_the_expected_amount():
    # The modes differ from each other on this field: a schedule bug cannot hide behind "all modes look alike".
    field = LinearField(seed=4)
    x0 = start_noise(len(LABELS))
    results = {m: sample(field, x0, LABELS, steps=6, shift=0.4, guidance=g, num_classes=NUM_CLASSES).latents
               for m, g, _ in GUIDANCE_CASES[:8]}
    names = list(results)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert float((results[names[i]] - results[names[j]]).abs().max()) > 1e-2, (names[i], names[j])


def test_constant_guidance_converges_to_the_flow_of_the_guided_field():
    # With constant w the guided field is again linear: b_w = b_u + w·(b_y − b_u), likewise c. Its exact flow is the
    # reference; Heun at 32 steps must be within its second-order error of it.
    field = LinearField(seed=5)
    x0 = start_noise(len(LABELS))
    w = 3.0
    null = torch.full_like(LABELS, NUM_CLASSES)
    with torch.no_grad():
        b = field.b[null] + w * (field.b[LABELS] - field.b[null])
        c = field.c[null] + w * (field.c[LABELS] - field.c[null])
    exact = field.exact(x0, LABELS, b, c)
    out = sample(field, x0, LABELS, steps=32, shift=0.0, solver="heun",
                 guidance=Guidance(GuidanceMode.CONSTANT, scale=w), num_classes=NUM_CLASSES)
    assert float((out.latents.double() - exact).abs().max()) < 5e-3


def test_unconditional_twins_only_where_the_scale_is_not_one():
    field = LinearField(seed=6)
    x0 = start_noise(2)
    y = torch.tensor([1, 2])
    # late with N = 4: steps 0, 1 unguided ((i + 1)/N <= 0.5), steps 2, 3 guided -> 2·(1 + 1 + 2 + 2) rows.
    out = sample(field, x0, y, steps=4, shift=0.4, guidance=Guidance(GuidanceMode.LATE, scale=2.0),
                 num_classes=NUM_CLASSES)
    assert out.nfe == 4 and out.model_rows == 2 * (1 + 1 + 2 + 2) == field.rows
    # zero-init K = 1: step 0 is one null-label row per image, then guided.
    field = LinearField(seed=6)
    out = sample(field, x0, y, steps=3, shift=0.4,
                 guidance=Guidance(GuidanceMode.ZERO_INIT, scale=2.0, zero_init_steps=1), num_classes=NUM_CLASSES)
    assert out.model_rows == 2 * (1 + 2 + 2) == field.rows


def test_every_row_uses_its_own_label():
    # A batch of mixed labels must give, row by row, what each label gives alone; and the rows really differ.
    field = LinearField(seed=7)
    x0 = start_noise(len(LABELS))
    guidance = Guidance(GuidanceMode.CONSTANT, scale=2.0)
    batch = sample(field, x0, LABELS, steps=4, shift=0.4, guidance=guidance, num_classes=NUM_CLASSES).latents
    for k, label in enumerate(LABELS.tolist()):
        alone = reference_sample(field, x0[k:k + 1], torch.tensor([label]), steps=4, shift=0.4, mode="constant",
                                 w=2.0)
        torch.testing.assert_close(batch[k:k + 1].double(), alone, rtol=1e-5, atol=1e-5)
    same_noise = x0[:1].expand(len(LABELS), -1, -1).contiguous()
    by_label = sample(field, same_noise, LABELS, steps=4, shift=0.4, guidance=guidance,
                      num_classes=NUM_CLASSES).latents
    assert float((by_label[0] - by_label[1]).abs().min()) > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Editing: SDEdit start and the re-imposition of the unedited region


def reference_edit(field: LinearField, x: torch.Tensor, y: torch.Tensor, editable: torch.Tensor, *, strength: float,
                   steps: int, shift: float, fade: float, seed: int, w: float = 1.0) -> torch.Tensor:
    """SDEdit from docs/sampling.md, in float64: start index N − ceil(strength·N), z = (1 − t_s)·ε + t_s·x, Euler,
    and after every step landing at t: z ← z + keep·((1 − t)·ε + t·x − z), keep = (1 − e)^(1 + fade·τ), τ the
    fraction of the edit's steps done."""
    grid = shifted_grid(steps, shift)
    start = steps - math.ceil(strength * steps - 1e-9)
    noise = torch.stack([initial_noise(seed, b, (T, C)) for b in range(x.shape[0])]).double()
    x, e = x.double(), editable.double()
    z = (1 - grid[start]) * noise + grid[start] * x
    null = torch.full_like(y, NUM_CLASSES)
    for i in range(start, steps):
        t0, t1 = grid[i], grid[i + 1]
        v_c, v_u = field.velocity64(z, t0, y), field.velocity64(z, t0, null)
        z = z + (t1 - t0) * (v_u + w * (v_c - v_u))
        keep = (1 - e) ** (1 + fade * (i + 1 - start) / (steps - start))
        z = z + keep * ((1 - t1) * noise + t1 * x - z)
    return z


@pytest.mark.parametrize("strength,fade,w", [(1.0, 1.0, 1.0), (0.6, 0.0, 1.0), (0.5, 2.0, 3.0)])
def test_edit_reimposes_the_unedited_region_as_specified(strength, fade, w):
    field = LinearField(seed=8)
    x = 2.0 * torch.randn(2, T, C, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 0])
    editable = torch.tensor([[0.0], [0.4], [1.0]]).expand(2, T, 1).contiguous()  # kept, soft band, free
    guidance = Guidance(GuidanceMode.CONSTANT, scale=w) if w != 1.0 else None
    out = edit(field, x, y, strength=strength, steps=10, shift=0.4, guidance=guidance, seed=5, editable=editable,
               mask_fade=fade, num_classes=NUM_CLASSES)
    ref = reference_edit(field, x, y, editable, strength=strength, steps=10, shift=0.4, fade=fade, seed=5, w=w)
    torch.testing.assert_close(out.latents.double(), ref, rtol=1e-5, atol=1e-5)
    assert out.nfe == 10 - out.start == math.ceil(strength * 10)
    # The kept token ends exactly on the source; the free token moved toward the target class's flow.
    torch.testing.assert_close(out.latents[:, 0], x[:, 0], rtol=0, atol=1e-6)
    assert float((out.latents[:, 2] - x[:, 2]).abs().max()) > 0.1


def test_edit_moves_the_editable_region_toward_the_target_class():
    # Same source, two target labels: only the editable token differs between the two results, by the class offset.
    field = LinearField(seed=9)
    x = torch.randn(1, T, C, generator=torch.Generator().manual_seed(1)).expand(2, T, C).contiguous()
    editable = torch.tensor([[1.0], [0.0], [0.0]]).expand(2, T, 1).contiguous()
    out = edit(field, x, torch.tensor([1, 4]), strength=1.0, steps=8, shift=0.4, seed=0, editable=editable,
               num_classes=NUM_CLASSES).latents
    ref = reference_edit(field, x, torch.tensor([1, 4]), editable, strength=1.0, steps=8, shift=0.4, fade=1.0, seed=0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert float((out[0, 0] - out[1, 0]).abs().max()) > 0.5
    torch.testing.assert_close(out[0, 1:], out[1, 1:], rtol=0, atol=1e-6)


def test_edit_strength_zero_returns_the_input_without_evaluations():
    field = LinearField(seed=10)
    x = torch.randn(2, T, C)
    out = edit(field, x, torch.tensor([0, 1]), strength=0.0, steps=10, num_classes=NUM_CLASSES)
    assert torch.equal(out.latents, x) and out.nfe == 0 and field.calls == 0


def test_edit_by_inversion_integrates_backwards_then_forwards():
    # Inversion: Euler from x at t = 1 down the reversed grid to t_s, with the null label, unguided; then the edit.
    # Editing to the SAME class with source_labels = that class and the full strength must come back close to x
    # (the round trip is exact up to the two discretisations, each O(h) for Euler).
    field = LinearField(seed=11)
    x = field.exact(start_noise(2), torch.tensor([2, 2])).float()  # a point the class-2 flow reaches
    y = torch.tensor([2, 2])
    errs = []
    for steps in (16, 64):
        out = edit(field, x, y, strength=0.5, steps=steps, shift=0.0, inversion=True, source_labels=y,
                   num_classes=NUM_CLASSES)
        assert out.nfe == 2 * (steps - out.start)
        errs.append(float((out.latents - x).abs().max()))
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.05, errs

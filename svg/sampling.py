"""Flow-matching sampler: time grid, guidance, seeds and a per-image, step-level batched integrator.

Convention (svg_reference.md §5, the reference code's, which the released weights were trained with): t = 0 is
pure noise, t = 1 is data, ``z_t = (1 − t)·ε + t·x`` and the network predicts the velocity ``v = x − ε``, fed the
raw t in [0, 1]. The paper writes ``x_t = (1 − t)·x0 + t·ε``, so ``t_code = 1 − t_paper`` and ``v_code = −v_paper``
(docs/sampling.md).

One image is a :class:`RowPlan` (start latent, its own shifted time grid, class label, guidance, solver, optional
edit). :func:`schedule` turns it into numbers, one :class:`Evaluation` per model evaluation, so guidance modes,
Heun's stages and the edit schedule need no Python branching while sampling. A :class:`svg.slots.SlotBatch` holds
the images being sampled in persistent device buffers and :func:`svg.slots.step` advances all of them with ONE
batched forward (unconditional twins only for the rows whose evaluation needs one), so rows at different
timesteps, step counts, guidance settings, solvers and request kinds mix freely. :func:`sample` and
:func:`run_rows` run that step to completion; the server's worker runs the same step through its engine.

Example::

    noise = torch.stack([initial_noise(seed=0, index=i, shape=(256, 392)) for i in range(4)])
    result = sample(model, noise, torch.tensor([207, 360, 387, 974]), steps=25,
                    guidance=Guidance(GuidanceMode.CONSTANT, scale=4.0), shift=0.15)
    result.latents  # (4, 256, 392) float32, normalised latent tokens
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch

__all__ = [
    "MAX_STEPS",
    "NULL_LABEL",
    "SEED_MAX",
    "shift_time",
    "time_grid",
    "GuidanceMode",
    "Guidance",
    "Solver",
    "derive_seed",
    "initial_noise",
    "EditState",
    "Stage",
    "Evaluation",
    "schedule",
    "evaluation_costs",
    "RowPlan",
    "RunResult",
    "run_rows",
    "SampleResult",
    "sample",
]

NULL_LABEL = 1000  # the reference's null class (num_classes); internal to guidance only
MAX_STEPS = 1000  # the largest step count we accept; the reference's longest published runs use 250
SEED_MAX = 2**63 - 1  # seeds are non-negative 63-bit integers (they survive JSON and every torch.Generator)

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _invalid(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


# --------------------------------------------------------------------------------------------------------------
# Time grid


def shift_time(t: torch.Tensor | float, s: float) -> torch.Tensor | float:
    """Timestep shift ``s·t / (1 + (s − 1)·t)``; the identity for ``s <= 0`` (reference ``compute_tm``).

    Args:
        t: times in [0, 1] (code convention, 0 = noise), a tensor of any shape and float dtype, or a float.
        s: the shift; s < 1 pushes the schedule toward noise (training 0.4, sampling 0.15). Equal to the SD3 shift
            with S = 1/s applied to σ = 1 − t (svg_reference.md §5).

    Returns:
        Same type, shape and dtype as ``t``; the computation runs in ``t``'s own precision.
    """
    if s <= 0:
        return t
    den = 1 + (s - 1) * t
    # For a tiny s (1e-20) the denominator cancels to 0 at t = 1 (s − 1 rounds to −1) and the formula gives 0/0;
    # the exact value there is s/s = 1. Elsewhere the reference's own expression, so the grid stays bit-identical.
    if isinstance(den, torch.Tensor):
        return torch.where(den == 0, torch.ones_like(t), s * t / den)
    return 1.0 if den == 0 else s * t / den


def time_grid(steps: int, shift: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The sampling grid ``shift(linspace(0, 1, steps + 1))`` on the CPU, shape ``(steps + 1,)``.

    The linspace is built in float32 and the shift evaluated in float64 before the cast to ``dtype``: this is how the
    reference's ``prepare_t_seq`` computes it and reproduces ``shift_grid.safetensors`` bit-exactly. The first entry
    is exactly 0 (noise), the last exactly 1 (data). Step sizes are ``grid.diff()``.

    Raises:
        ValueError: ``steps`` not an integer in [1, MAX_STEPS], or ``shift`` not finite.
    """
    _check_steps(steps)
    if not math.isfinite(shift):
        raise _invalid("shift", shift, "a finite number (<= 0 means no shift)")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)
    grid = shift_time(u.double(), shift).clamp_(0.0, 1.0)
    # For s below ~1e-9, 1 + (s − 1)·t loses s to cancellation and the last entry drifts off 1 (1.0008 at s = 1e-14);
    # the grid must end at the data exactly. For ordinary s this changes nothing (the value is already 1 in float32).
    grid[-1] = 1.0
    return grid.to(dtype)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise _invalid("steps", steps, f"an integer in [1, {MAX_STEPS}]")


# --------------------------------------------------------------------------------------------------------------
# Guidance


class GuidanceMode(str, enum.Enum):
    """How the class-conditional and unconditional velocities are combined (svg_reference.md §5, ``cfg_mode``).

    With scale w, ``v = v_u + w·(v_c − v_u)`` whenever guidance is active. Where the effective scale is 1 the
    unconditional twin is skipped and ``v = v_c`` (equal up to rounding, and half the rows).

    * ``NONE``: ``v = v_c``; no unconditional rows at all.
    * ``CONSTANT``: w at every evaluation (reference ``constant``).
    * ``ZERO_INIT``: CFG-Zero*-style; the first ``zero_init_steps`` steps use ``v = −zero_init_ratio·v_u`` (one
      null-label row), then constant (reference ``cfg_star-K-r``; ``cfg_star-1-0`` is the FID script's default).
    * ``INTERVAL``: w only for evaluations with t in ``[interval[0], interval[1]]``, else 1. The reference release
      raises for ``interval``; this is our design, in the spirit of guidance-interval methods.
    * ``LATE``: w only when ``(i + 1)/N > 0.5`` (reference ``late``).
    * ``LINEAR``: ``w_i = 1 + (w − 1)·(i + 1)/N`` (reference ``linear``).
    * ``EARLY``: w only when t > ``interval[0]`` (reference ``early-X`` with X = ``interval[0]``).

    Here i is the step index on the trajectory's full grid and N its step count.
    """

    NONE = "none"
    CONSTANT = "constant"
    ZERO_INIT = "zero_init"
    INTERVAL = "interval"
    LATE = "late"
    LINEAR = "linear"
    EARLY = "early"


MAX_GUIDANCE_SCALE = 100.0  # far above any useful value (the paper uses up to ~8); guards typos such as 400


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of one image, validated on creation.

    Attributes:
        mode: a :class:`GuidanceMode` (its string value is accepted too).
        scale: guidance scale w in [0, 100]; must be 1.0 with ``NONE``.
        zero_init_steps: K, the number of zero-init steps (``ZERO_INIT`` only), >= 0.
        zero_init_ratio: r in [0, 10]; zero-init steps use ``v = −r·v_u`` (r = 0 leaves z unchanged).
        interval: ``(lo, hi)`` with 0 <= lo <= hi <= 1, in code time (0 = noise); used by ``INTERVAL`` and, as the
            threshold ``lo``, by ``EARLY``.

    Raises:
        ValueError: any field outside its range; the message names the field, the value and the range.
    """

    mode: GuidanceMode = GuidanceMode.NONE
    scale: float = 1.0
    zero_init_steps: int = 1
    zero_init_ratio: float = 0.0
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        try:
            mode = GuidanceMode(self.mode)
        except ValueError:
            raise _invalid("guidance.mode", self.mode, str([m.value for m in GuidanceMode])) from None
        object.__setattr__(self, "mode", mode)
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= MAX_GUIDANCE_SCALE:
            raise _invalid("guidance.scale", scale, f"a number in [0, {MAX_GUIDANCE_SCALE:g}]")
        object.__setattr__(self, "scale", float(scale))
        if mode is GuidanceMode.NONE and self.scale != 1.0:
            raise _invalid("guidance.scale", self.scale, "1.0 when guidance.mode is 'none' (it would be ignored)")
        k = self.zero_init_steps
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_STEPS:
            raise _invalid("guidance.zero_init_steps", k, f"an integer in [0, {MAX_STEPS}]")
        r = self.zero_init_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 10.0:
            raise _invalid("guidance.zero_init_ratio", r, "a number in [0, 10]")
        object.__setattr__(self, "zero_init_ratio", float(r))
        try:
            lo, hi = (float(v) for v in self.interval)
        except (TypeError, ValueError):
            raise _invalid("guidance.interval", self.interval, "a pair (lo, hi) of numbers") from None
        if not 0.0 <= lo <= hi <= 1.0:
            raise _invalid("guidance.interval", self.interval, "(lo, hi) with 0 <= lo <= hi <= 1")
        object.__setattr__(self, "interval", (lo, hi))

    def zero_init_active(self, steps_done: int) -> bool:
        """True while a ``ZERO_INIT`` trajectory that has completed ``steps_done`` steps is in its first K."""
        return self.mode is GuidanceMode.ZERO_INIT and steps_done < self.zero_init_steps

    def scale_at(self, step: int, steps: int, t: float) -> float:
        """Effective scale for an evaluation of step ``step`` (0-based, on a grid of ``steps``) at time ``t``.

        1.0 means no guidance at this evaluation (no unconditional twin). The zero-init phase is handled by
        :meth:`zero_init_active`; outside it ``ZERO_INIT`` behaves as ``CONSTANT``.
        """
        mode, w = self.mode, self.scale
        if mode is GuidanceMode.NONE:
            return 1.0
        if mode is GuidanceMode.INTERVAL:
            return w if self.interval[0] <= t <= self.interval[1] else 1.0
        if mode is GuidanceMode.LATE:
            return w if (step + 1) / steps > 0.5 else 1.0
        if mode is GuidanceMode.LINEAR:
            return 1.0 + (w - 1.0) * (step + 1) / steps
        if mode is GuidanceMode.EARLY:
            return w if t > self.interval[0] else 1.0
        return w  # CONSTANT, ZERO_INIT after its first K steps


class Solver(str, enum.Enum):
    """ODE integrator. ``EULER``: 1 evaluation per step. ``HEUN``: 2 (the second at t_{i+1}, also t = 1 on the last
    step, exactly as the reference's ``call_t`` shows)."""

    EULER = "euler"
    HEUN = "heun"


def _solver(value: Solver | str) -> Solver:
    try:
        return Solver(value)
    except ValueError:
        raise _invalid("solver", value, str([s.value for s in Solver])) from None


# --------------------------------------------------------------------------------------------------------------
# Seeds and noise

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer with good avalanche.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a request with seed ``seed``.

    Image 0 uses ``seed`` itself (so a one-image request with seed 7 draws ``torch.randn`` from
    ``manual_seed(7)``); image i > 0 uses ``splitmix64(seed XOR splitmix64(i)) >> 1``, a 63-bit value. It depends
    only on (seed, index), never on batch size, position in a server batch or device.

    Raises:
        ValueError: ``seed`` not in [0, 2**63 − 1] or ``index`` not in [0, 2**32).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise _invalid("seed", seed, f"an integer in [0, {SEED_MAX}]")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
        raise _invalid("index", index, "an integer in [0, 2**32)")
    if index == 0:
        return seed
    return _splitmix64(seed ^ _splitmix64(index)) >> 1


def initial_noise(seed: int, index: int, shape: Sequence[int] = (256, 392),
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal start noise for image ``index`` of a request with seed ``seed``.

    Drawn on the CPU from its own ``torch.Generator`` seeded with :func:`derive_seed`, in float32, then moved to
    ``device``: bit-identical across devices and batch compositions (cases B10, B33).

    Returns:
        ``shape`` (normally ``(T, C)``) float32 tensor on ``device`` (CPU by default).

    Raises:
        ValueError: bad seed or index (see :func:`derive_seed`).
    """
    generator = torch.Generator(device="cpu").manual_seed(derive_seed(seed, index))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise if device is None else noise.to(device)


# --------------------------------------------------------------------------------------------------------------
# One image's sampling plan, as numbers per model evaluation


@dataclass(frozen=True)
class EditState:
    """Masked-editing state of one image (see svg/editing.py and docs/sampling.md).

    After every completed step, landing at time t, the unedited region is re-imposed:
    ``z ← lerp(z, (1 − t)·noise + t·reference, keep)`` with ``keep = (1 − editable)^(1 + fade·τ)``, where τ in (0, 1]
    is the fraction of the edit's steps done. Where ``editable`` is 0 the reference path is followed exactly (and at
    t = 1 the result is the reference latent); where it is 1 the model is free; in the soft band between, the pull
    toward the reference fades as denoising proceeds so the boundary can blend.

    Attributes:
        editable: (T, 1) float32 in [0, 1], 1 where the content may change.
        reference: (T, C) float32, the clean (normalised) latent of the source image.
        noise: (T, C) float32, the fixed noise that places ``reference`` on the path at any t.
        fade: >= 0; 0 keeps the soft mask constant.
    """

    editable: torch.Tensor
    reference: torch.Tensor
    noise: torch.Tensor
    fade: float = 1.0


class Stage(enum.IntEnum):
    """What an evaluation's velocity does to the latent (Heun: Karras et al. 2022, Alg. 1 without churn)."""

    EULER = 0  # z ← z + dt·v
    PREDICT = 1  # Heun's first stage: remember (z, v), z ← z + dt·v (evaluated again at t_{i+1})
    CORRECT = 2  # Heun's second stage: z ← z_i + dt/2·(v_i + v)


class Evaluation(NamedTuple):
    """The numbers of one model evaluation of one image: everything the step needs, no branching left.

    ``t``: time fed to the model; ``label``: label of the conditional row (the null class during zero-init);
    ``mult``: multiplier of that row's velocity (−r during zero-init, else 1); ``w``: guidance scale, used only when
    ``twin`` (an unconditional twin row runs); ``dt``: the step size; ``stage``: a :class:`Stage`; ``t_after``: the
    time reached when the step completes; ``keep_exp``: the edit mask exponent ``1 + fade·τ``; ``reimpose``: 1.0
    when the edit re-impose runs after this evaluation (edit rows, completed steps), else 0.0.
    """

    t: float
    label: int
    mult: float
    w: float
    twin: bool
    dt: float
    stage: Stage
    t_after: float
    keep_exp: float
    reimpose: float


def schedule(grid: torch.Tensor, guidance: Guidance, solver: Solver | str = Solver.EULER, *, start: int = 0,
             label: int | None = 0, num_classes: int = NULL_LABEL, fade: float | None = None) -> list[Evaluation]:
    """Every model evaluation of one image, in order: the single place where guidance modes, Heun's two stages,
    zero-init and the edit schedule turn into numbers (the server's row costs come from here too).

    Args:
        grid: (steps + 1,) time grid (increasing, or decreasing for inversion).
        guidance, solver: as for :func:`sample`. start: first step (SDEdit). label: class, or None (null class).
        num_classes: the null label. fade: the edit's mask fade, or None for no edit re-impose.

    Returns:
        ``len = (steps − start)·(2 if Heun else 1)`` evaluations.
    """
    solver = _solver(solver)
    times = grid.tolist()  # python floats of the float32 grid: the values the reference feeds
    steps_dt = grid.diff().tolist()  # float32 differences, as the reference
    steps = len(times) - 1
    null = num_classes
    out = []
    for i in range(start, steps):
        stages = (Stage.PREDICT, Stage.CORRECT) if solver is Solver.HEUN else (Stage.EULER,)
        for stage in stages:
            t = times[i + 1] if stage is Stage.CORRECT else times[i]  # Heun's corrector evaluates at t_{i+1}
            if guidance.zero_init_active(i - start):
                row_label, mult, w = null, -guidance.zero_init_ratio, 1.0
            else:
                row_label, mult, w = (null if label is None else label), 1.0, guidance.scale_at(i, steps, t)
            completes = stage is not Stage.PREDICT
            tau = (i + 1 - start) / (steps - start)
            out.append(Evaluation(t, row_label, mult, w, w != 1.0 and mult == 1.0, steps_dt[i], stage, times[i + 1],
                                  1.0 + (fade or 0.0) * tau, 1.0 if (fade is not None and completes) else 0.0))
    return out


def evaluation_costs(evaluations: Sequence[Evaluation]) -> list[int]:
    """Forward rows of each evaluation: 2 with an unconditional twin, else 1 (the scheduler's exact row cost)."""
    return [2 if e.twin else 1 for e in evaluations]


@dataclass(frozen=True, eq=False)
class RowPlan:
    """How one image is sampled: its start latent, time grid, class, guidance, solver and optional edit.

    A :class:`svg.slots.SlotBatch` admits it into a slot; :func:`run_rows` runs a list of them to the end.

    Args:
        z: (T, C) float32 latent at ``grid[start]`` (noise for generation).
        label: class label in [0, num_classes), or None for an unconditional image (null-class rows; only with
            guidance ``NONE``). The null class ``num_classes`` itself is internal and rejected (case B12).
        grid: (steps + 1,) time grid from :func:`time_grid`, increasing from 0 to 1 (or decreasing, for inversion).
        guidance: :class:`Guidance`. solver: :class:`Solver` or its value.
        start: first step index (> 0 for SDEdit, which starts at ``grid[start]``; ``steps`` gives a plan with no
            evaluations whose result is ``z`` unchanged).
        num_classes: the model's class count; the null label equals it.
        edit: optional :class:`EditState` (masked editing).

    Raises:
        ValueError: a field outside its range (named in the message).
    """

    z: torch.Tensor
    label: int | None
    grid: torch.Tensor
    guidance: Guidance = field(default_factory=Guidance)
    solver: Solver = Solver.EULER
    start: int = 0
    num_classes: int = NULL_LABEL
    edit: EditState | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", _solver(self.solver))
        if not isinstance(self.guidance, Guidance):
            raise _invalid("guidance", self.guidance, "a svg.sampling.Guidance")
        if self.z.dim() != 2 or self.z.dtype != torch.float32:
            raise _invalid("z.shape/dtype", (tuple(self.z.shape), self.z.dtype), "a (T, C) float32 tensor")
        if self.grid.dim() != 1 or self.grid.numel() < 2:
            raise _invalid("grid.shape", tuple(self.grid.shape), "(steps + 1,) with steps >= 1")
        label = self.label
        if label is None and self.guidance.mode is not GuidanceMode.NONE:
            raise _invalid("label", label, "a class label when guidance is used (None means unconditional)")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)
                                  or not 0 <= label < self.num_classes):
            raise _invalid("label", label, f"an integer in [0, {self.num_classes - 1}] or None (unconditional)")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or not 0 <= self.start <= self.steps:
            raise _invalid("start", self.start, f"an integer in [0, {self.steps}] ({self.steps}: nothing to do)")

    @property
    def steps(self) -> int:
        """N, the step count of the full grid (SDEdit runs ``N − start`` of them)."""
        return self.grid.numel() - 1

    def evaluations(self) -> list[Evaluation]:
        """This image's :func:`schedule`."""
        return schedule(self.grid, self.guidance, self.solver, start=self.start, label=self.label,
                        num_classes=self.num_classes, fade=None if self.edit is None else self.edit.fade)


# --------------------------------------------------------------------------------------------------------------
# Running plans to completion (library API; the server runs the same step through its engine)


@dataclass(frozen=True)
class RunResult:
    """Output of :func:`run_rows`: ``latents`` (B, T, C) float32 final latents; ``nfe`` (B,) model evaluations of
    each image (solver stages); ``model_rows`` forward rows in total, counting unconditional twins; ``calls``
    forward calls."""

    latents: torch.Tensor
    nfe: list[int]
    model_rows: int
    calls: int


def run_rows(model: Model, plans: Sequence[RowPlan]) -> RunResult:
    """Run every plan to its end with one batched forward per step (:func:`svg.slots.step`, the server's step).

    Rows at different timesteps, step counts, guidance settings, solvers and kinds share each forward; a plan
    leaves the batch when its evaluations are done. ``model(x (R, T, C) f32, t (R,) f32, y (R,) i64)`` is any
    callable with ``SiT.forward``'s signature; its velocity is the first C output channels.

    Raises:
        ValueError: plans with different latent shapes, devices or null labels, or no plans.
    """
    from svg.slots import SlotBatch, step

    if not plans:
        raise _invalid("plans", [], "at least one RowPlan")
    first = plans[0]
    for p in plans:
        if p.z.shape != first.z.shape or p.z.device != first.z.device or p.num_classes != first.num_classes:
            raise _invalid("plans", "mixed", f"one latent shape {tuple(first.z.shape)}, device "
                           f"{first.z.device} and num_classes {first.num_classes} per batch")
    evaluations = [p.evaluations() for p in plans]
    tokens, channels = first.z.shape
    slots = SlotBatch(len(plans), tokens, channels, max_evals=max(1, max(len(e) for e in evaluations)),
                      num_classes=first.num_classes, device=first.z.device)
    for slot, (plan, evals) in enumerate(zip(plans, evaluations)):
        slots.admit(slot, plan, evals)
    active = [slot for slot, evals in enumerate(evaluations) if evals]
    rows = calls = 0
    with torch.no_grad():
        while active:
            layout = slots.layout(active)  # (4, R): the forward rows of this step
            step(model, slots, layout.to(slots.device))
            rows, calls = rows + layout.shape[1], calls + 1
            done = set(slots.advance(active))
            active = [slot for slot in active if slot not in done]
    return RunResult(slots.x[:len(plans)].clone(), [len(e) for e in evaluations], rows, calls)


@dataclass(frozen=True)
class SampleResult:
    """Output of :func:`sample`.

    Attributes:
        latents: (B, T, C) float32 final latents (normalised token space, t = 1).
        nfe: denoiser evaluations per image (``steps`` for Euler, ``2·steps`` for Heun).
        model_rows: forward rows in total, counting unconditional twins.
        t_grid: (steps + 1,) float32 time grid used.
    """

    latents: torch.Tensor
    nfe: int
    model_rows: int
    t_grid: torch.Tensor


def sample(model: Model, noise: torch.Tensor, y: torch.Tensor, *, steps: int, guidance: Guidance | None = None,
           shift: float = 0.15, solver: Solver | str = Solver.EULER, num_classes: int = NULL_LABEL) -> SampleResult:
    """Integrate the flow ODE from ``noise`` (t = 0) to data (t = 1): the reference ``RectifiedFlow.sample``.

    Conditional and unconditional rows go through one batched forward per evaluation (the reference runs two
    forwards); the numbers agree within the fixtures' float32 tolerance.

    Args:
        model: callable ``(x (R, T, C), t (R,), y (R,)) -> (R, T, C_out)``, e.g. ``svg.sit.SiT`` in eval mode.
        noise: (B, T, C) float32 start noise (see :func:`initial_noise`).
        y: (B,) int64 class labels in [0, num_classes).
        steps: N in [1, MAX_STEPS]; Euler takes exactly N evaluations per image, Heun 2·N.
        guidance: :class:`Guidance` (default: none).
        shift: timestep shift s (<= 0: none); the reference scripts use 0.15.
        solver: ``"euler"`` or ``"heun"``.
        num_classes: the model's class count; the null label equals it.

    Raises:
        ValueError: bad shapes, labels, steps, shift or solver (the message names the field).
    """
    guidance = Guidance() if guidance is None else guidance
    if noise.dim() != 3:
        raise _invalid("noise.shape", tuple(noise.shape), "(B, T, C)")
    if y.shape != noise.shape[:1]:
        raise _invalid("y.shape", tuple(y.shape), f"({noise.shape[0]},), one label per image")
    grid = time_grid(steps, shift)
    plans = [RowPlan(noise[b].float(), int(label), grid, guidance, solver, num_classes=num_classes)
             for b, label in enumerate(y.tolist())]
    result = run_rows(model, plans)
    return SampleResult(result.latents, result.nfe[0], result.model_rows, grid)

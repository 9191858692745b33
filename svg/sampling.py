"""Flow-matching sampler: time grid, guidance, seeds and a per-image, step-level batched integrator.

Convention (svg_reference.md §5, the reference code's, which the released weights were trained with): t = 0 is
pure noise, t = 1 is data, ``z_t = (1 − t)·ε + t·x`` and the network predicts the velocity ``v = x − ε``, fed the
raw t in [0, 1]. The paper writes ``x_t = (1 − t)·x0 + t·ε``, so ``t_code = 1 − t_paper`` and ``v_code = −v_paper``
(docs/sampling.md).

The sampling state of ONE image is a :class:`Trajectory`: its latent, its own shifted time grid, class label,
guidance and solver. :func:`step_batch` advances any set of trajectories by one model evaluation each, with ONE
batched forward (unconditional twins are appended only for the rows that need them), so rows at different
timesteps, step counts, guidance settings, solvers and request kinds mix freely. :func:`sample` is a loop over
:func:`step_batch`; the server's worker calls the same function on whatever trajectories are active.

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
    "Pending",
    "Trajectory",
    "step_batch",
    "run_to_completion",
    "SampleResult",
    "sample",
]

NULL_LABEL = 1000  # the reference's null class (num_classes); internal to guidance only
MAX_STEPS = 1000  # the largest step count we accept; the reference's longest published runs use 250
SEED_MAX = 2**63 - 1  # seeds are non-negative 63-bit integers (a signed int64 everywhere: NumPy, torch, databases)

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

_TWO_PI = 2.0 * math.pi
_U53 = 2.0**-53  # one unit in the last place of a 53-bit uniform


def derive_seed(seed: int, index: int) -> tuple[int, int]:
    """The noise key of image ``index`` of a request with seed ``seed``: the 128-bit Philox key ``(seed, index)``.

    The key is the pair itself, so every (seed, index) has its own stream: seeds that differ by 2**32 (or any
    amount) never share noise, which a 32-bit-seeded generator such as torch's CPU Mersenne Twister cannot promise.
    Philox is counter-based (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): distinct keys
    give independent streams, with no mixing step needed.

    Returns:
        ``(seed, index)`` as the two 64-bit words of the key.

    Raises:
        ValueError: ``seed`` not in [0, 2**63 − 1] or ``index`` not in [0, 2**32).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise _invalid("seed", seed, f"an integer in [0, {SEED_MAX}]")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
        raise _invalid("index", index, "an integer in [0, 2**32)")
    return seed, index


def initial_noise(seed: int, index: int, shape: Sequence[int] = (256, 392),
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal start noise for image ``index`` of a request with seed ``seed``. The ONE place that decides
    how seeds become noise; stable from now on (a change would change every image of every seed).

    Derivation (device-independent, computed on the CPU whatever ``device`` is):

    1. NumPy's Philox-4x64-10 bit generator with key :func:`derive_seed` ``= (seed, index)`` and counter 0 yields
       ``2·ceil(n/2)`` raw 64-bit words ``w`` for ``n = prod(shape)`` values (NumPy keeps bit-generator streams
       stable across releases, NEP 19).
    2. Consecutive word pairs become uniforms ``u1 = (w0 >> 11 + 1)·2**-53`` in (0, 1] and
       ``u2 = (w1 >> 11)·2**-53`` in [0, 1).
    3. Box–Muller (float64): ``r = sqrt(−2·ln u1)``; the pair gives ``r·cos(2π·u2)`` then ``r·sin(2π·u2)``;
       the first ``n`` values, rounded to float32, in row-major order of ``shape``.

    The noise depends only on (seed, index): never on batch size, batch mates or device (cases B10, B33).

    Returns:
        ``shape`` (normally ``(T, C)``) float32 tensor on ``device`` (CPU by default).

    Raises:
        ValueError: bad seed or index (see :func:`derive_seed`).
    """
    import numpy as np

    key = np.array(derive_seed(seed, index), dtype=np.uint64)
    n = math.prod(int(d) for d in shape)
    pairs = (n + 1) // 2
    words = np.random.Philox(key=key).random_raw(2 * pairs).reshape(pairs, 2)
    u1 = ((words[:, 0] >> np.uint64(11)).astype(np.float64) + 1.0) * _U53
    u2 = (words[:, 1] >> np.uint64(11)).astype(np.float64) * _U53
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = _TWO_PI * u2
    normal = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)[:n]
    noise = torch.from_numpy(normal.astype(np.float32).reshape(tuple(int(d) for d in shape)))
    return noise if device is None else noise.to(device)


# --------------------------------------------------------------------------------------------------------------
# Trajectory


@dataclass
class EditState:
    """Masked-editing hook of a trajectory (see svg/editing.py and docs/sampling.md).

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


class Pending(NamedTuple):
    """The next model evaluation a trajectory needs: latent ``z`` (T, C), time ``t`` and whether it is ``guided``
    (needs an unconditional twin row). Its label is :attr:`Trajectory.eval_label`."""

    z: torch.Tensor
    t: float
    guided: bool


@dataclass(eq=False)
class Trajectory:
    """The sampling state of ONE image, advanced one model evaluation at a time.

    Args:
        z: (T, C) float32 latent at ``grid[start]`` (noise for generation); it is not modified in place.
        label: class label in [0, num_classes), or None for an unconditional trajectory (null-class rows; only
            with guidance ``NONE``). The null class ``num_classes`` itself is internal and rejected (case B12).
        grid: (steps + 1,) time grid from :func:`time_grid`, increasing from 0 to 1 (or decreasing, for inversion).
        guidance: :class:`Guidance`.
        solver: :class:`Solver` or its value.
        start: first step index (> 0 for SDEdit, which starts at ``grid[start]``; ``steps`` gives a trajectory that
            is done on creation and returns ``z`` unchanged).
        num_classes: the model's class count; the null label equals it.
        edit: optional :class:`EditState` (masked editing).

    Attributes:
        index: the current step i; ``done`` once it reaches ``steps``.
        stage: 0, or 1 for Heun's second evaluation of step i.
        nfe: model evaluations (solver stages) so far; rows: forward rows so far, counting unconditional twins.

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
    index: int = field(init=False)
    stage: int = field(init=False, default=0)
    nfe: int = field(init=False, default=0)
    rows: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.solver = _solver(self.solver)
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
        self._times = self.grid.tolist()  # python floats (exact float32 values): no device syncs in the loop
        self._steps_dt = self.grid.diff().tolist()  # float32 differences, as the reference
        self.index = self.start
        self._z_stage0: torch.Tensor | None = None  # Heun: z at t_i and the first velocity
        self._v_stage0: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        """N, the step count of the full grid (SDEdit runs ``N − start`` of them)."""
        return self.grid.numel() - 1

    @property
    def done(self) -> bool:
        return self.index >= self.steps

    @property
    def t(self) -> float:
        """The time of the current state ``z``."""
        return self._times[self.index]

    def _coefficients(self, t: float) -> tuple[int, float, float | None]:
        # (label of the primary row, multiplier of its output, guidance scale or None when no twin is needed)
        if self.guidance.zero_init_active(self.index - self.start):
            return self.num_classes, -self.guidance.zero_init_ratio, None
        w = self.guidance.scale_at(self.index, self.steps, t)
        label = self.num_classes if self.label is None else self.label
        return label, 1.0, (None if w == 1.0 else w)

    def pending(self) -> Pending:
        """The next evaluation: ``Pending(z (T, C), t, guided)``.

        Raises:
            RuntimeError: the trajectory is done.
        """
        if self.done:
            raise RuntimeError("trajectory is done; it has no pending evaluation")
        t = self._times[self.index + self.stage]  # Heun's second stage evaluates the predictor at t_{i+1}
        return Pending(self.z, t, self._coefficients(t)[2] is not None)

    @property
    def eval_label(self) -> int:
        """Label of the pending evaluation's (first) row: the class, or the null label during zero-init steps."""
        return self._coefficients(self.pending().t)[0]

    @property
    def rows_needed(self) -> int:
        """Forward rows the pending evaluation takes: 2 when guided, else 1 (for the server's row budget)."""
        return 2 if self.pending().guided else 1

    def advance(self, v_row: torch.Tensor, v_uncond: torch.Tensor | None = None) -> None:
        """Consume the model output of the pending evaluation.

        Args:
            v_row: (T, C) velocity (first C output channels) of the row labelled :attr:`eval_label`.
            v_uncond: (T, C) velocity of the unconditional twin; required iff the pending evaluation is guided.

        Raises:
            ValueError: ``v_uncond`` given or missing against ``pending().guided``.
        """
        _, t, guided = self.pending()
        if guided != (v_uncond is not None):
            raise _invalid("v_uncond", None if v_uncond is None else "tensor",
                           "a tensor" if guided else "None (this evaluation is not guided)")
        _, mult, w = self._coefficients(t)
        self.rows += 2 if guided else 1
        v = v_row.float() * mult
        if w is not None:
            v = _cfg(v, v_uncond.float(), torch.tensor(w, dtype=torch.float32, device=v.device))
        dt = torch.tensor(self._steps_dt[self.index], dtype=torch.float32, device=v.device)
        self._commit(v, self.z + dt * v)

    def _commit(self, v: torch.Tensor, moved: torch.Tensor) -> None:
        # v: (T, C) guided velocity of the pending evaluation; moved = z + dt·v (computed batched by step_batch).
        # Euler: z ← moved. Heun: predictor z ← moved, then the trapezoid from the stored start of the step.
        self.nfe += 1
        if self.solver is Solver.EULER:
            self.z = moved
        elif self.stage == 0:
            self._z_stage0, self._v_stage0 = self.z, v
            self.z = moved
            self.stage = 1
            return
        else:
            dt = self._steps_dt[self.index]
            self.z = self._z_stage0 + (0.5 * dt) * (self._v_stage0 + v)
            self._z_stage0 = self._v_stage0 = None
            self.stage = 0
        self.index += 1
        if self.edit is not None:
            self._reimpose()

    def _reimpose(self) -> None:
        edit, t = self.edit, self._times[self.index]
        progress = (self.index - self.start) / (self.steps - self.start)  # τ in (0, 1]
        keep = (1.0 - edit.editable).pow(1.0 + edit.fade * progress)  # (T, 1)
        on_path = (1.0 - t) * edit.noise + t * edit.reference  # (T, C), the reference latent noised to t
        self.z = torch.lerp(self.z, on_path, keep)


def _cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # v = v_u + w·(v_c − v_u) on ALL channels (case B09), w broadcast over (..., T, C).
    return v_uncond + w * (v_cond - v_uncond)


# --------------------------------------------------------------------------------------------------------------
# Batched step


def step_batch(model: Model, trajectories: Sequence[Trajectory]) -> int:
    """Advance every unfinished trajectory by one model evaluation, with ONE forward call.

    The rows are the pending evaluations in the given order, followed by one unconditional twin (label
    ``num_classes``) per guided row only. ``model(x (R, T, C) float32, t (R,) float32, y (R,) int64)`` is any
    callable with ``SiT.forward``'s signature (an engine); the velocity is the first C output channels. The guidance
    combination is vectorised over the batch; each row's result is the same as if it ran alone (up to the model's
    own batch-size dependence).

    Returns:
        R, the number of forward rows (0 when nothing was pending; then the model is not called).

    Raises:
        ValueError: trajectories with different latent shapes, devices or null labels.
    """
    active = [tr for tr in trajectories if not tr.done]
    if not active:
        return 0
    first = active[0]
    for tr in active:
        if tr.z.shape != first.z.shape or tr.z.device != first.z.device or tr.num_classes != first.num_classes:
            raise _invalid("trajectories", "mixed", f"one latent shape {tuple(first.z.shape)}, device "
                           f"{first.z.device} and num_classes {first.num_classes} per batch")
    device, channels = first.z.device, first.z.shape[-1]
    pending = [tr.pending() for tr in active]
    coeffs = [tr._coefficients(p.t) for tr, p in zip(active, pending)]
    guided = [i for i, (_, _, w) in enumerate(coeffs) if w is not None]

    x = torch.stack([p.z for p in pending] + [pending[i].z for i in guided])  # (R, T, C)
    t = torch.tensor([p.t for p in pending] + [pending[i].t for i in guided], dtype=torch.float32)
    y = torch.tensor([c[0] for c in coeffs] + [first.num_classes] * len(guided), dtype=torch.int64)
    with torch.no_grad():
        out = model(x, t.to(device), y.to(device))[..., :channels].float()  # (R, T, C) velocities

    n = len(active)
    mult = torch.tensor([c[1] for c in coeffs], dtype=torch.float32, device=device).view(n, 1, 1)
    v = out[:n] * mult  # × 1 is exact; × −r for zero-init rows
    if guided:
        rows = torch.tensor(guided, device=device)
        w = torch.tensor([coeffs[i][2] for i in guided], dtype=torch.float32, device=device).view(-1, 1, 1)
        v[rows] = _cfg(v[rows], out[n:], w)
    dt = torch.tensor([tr._steps_dt[tr.index] for tr in active], dtype=torch.float32, device=device)
    moved = x[:n] + dt.view(n, 1, 1) * v  # (n, T, C): every row's Euler step / Heun predictor in one op
    for k, tr in enumerate(active):
        tr.rows += 2 if coeffs[k][2] is not None else 1
        tr._commit(v[k], moved[k])
    return x.shape[0]


def run_to_completion(model: Model, trajectories: Sequence[Trajectory]) -> tuple[int, int]:
    """Call :func:`step_batch` until every trajectory is done. Returns ``(forward calls, forward rows)``."""
    calls = rows = 0
    while True:
        r = step_batch(model, trajectories)
        if r == 0:
            return calls, rows
        calls, rows = calls + 1, rows + r


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
    trajectories = [Trajectory(noise[b].float(), int(label), grid, guidance, solver, num_classes=num_classes)
                    for b, label in enumerate(y.tolist())]
    _, rows = run_to_completion(model, trajectories)
    latents = torch.stack([tr.z for tr in trajectories])
    return SampleResult(latents, trajectories[0].nfe, rows, grid)

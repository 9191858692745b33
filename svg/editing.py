"""Image editing (SDEdit with optional inversion and a soft mask) and noise interpolation.

The reference release has no editing code (svg_reference.md §6); the paper's Appendix C describes SDEdit-style
editing with a softened mask. The design here is ours and is documented in docs/sampling.md:

* **Start time.** ``strength`` in [0, 1] picks the start index ``start = N − ceil(strength·N)`` on the shifted grid
  of N steps, so strength 1 starts from pure noise, any strength > 0 runs at least one step (case B15) and strength 0
  returns the input latent unchanged with zero evaluations.
* **Start latent.** Either fresh noise from the request seed, ``z = (1 − t_s)·ε + t_s·x`` (SDEdit), or by inversion:
  the ODE integrated backwards with Euler from the clean latent at t = 1 down to t_s on the same grid, with the
  source class (or the null class) and no guidance. Inversion is just a :class:`~svg.sampling.RowPlan` on the
  reversed grid, so it batches with everything else in the slot batch (:mod:`svg.slots`).
* **Mask.** A binary mask is blurred (Gaussian, ``sigma_px``) and area-averaged to the token grid; ``inside`` edits
  where the mask is 1, ``outside`` where it is 0. After every step the unedited region is re-imposed from the source
  latent noised to the current t with the fixed noise (for inversion, the noise implied by the inverted latent),
  blended by the soft mask, whose pull fades during denoising (``keep = (1 − editable)^(1 + fade·τ)``).
* **Interpolation** of the initial noise: linear (paper Eq. 7), spherical (Eq. 8) and the reference's
  variance-preserving "nonlinear" mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from svg.sampling import (NULL_LABEL, EditState, Guidance, Model, RowPlan, SampleResult, Solver, initial_noise,
                          run_rows, sample, time_grid)

__all__ = [
    "MASK_MODES",
    "INTERPOLATION_MODES",
    "soften_mask",
    "box_mask",
    "editable_region",
    "sdedit_start",
    "inversion_trajectory",
    "edit_trajectory",
    "EditResult",
    "edit",
    "interpolate_noise",
    "interpolate",
]

MASK_MODES = ("inside", "outside")
INTERPOLATION_MODES = ("lerp", "slerp", "vp")
_SNAP = 1e-6  # mask values this close to 0 or 1 are float rounding of a blur kernel that sums to 1
_PARALLEL_SIN = 1e-6  # below this sin(angle), slerp is ill-conditioned: fall back to lerp (case B35)


def _invalid(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


# --------------------------------------------------------------------------------------------------------------
# Masks


def soften_mask(mask: torch.Tensor, sigma_px: float, grid: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """Blur a pixel mask and average it onto the token grid.

    Args:
        mask: (B, 1, H, W) mask in [0, 1] (normally binary), 1 = the marked region.
        sigma_px: Gaussian blur sigma in pixels, >= 0 (0: no blur). The kernel spans ±3 sigma, capped to the image.
        grid: the token grid (h, w); 16×16 for 256 px images.

    Returns:
        (B, h·w, 1) float32 in [0, 1], tokens in row-major order (as ``svg.latent.to_tokens``); values within
        1e-6 of 0 or 1 are snapped to it.

    Raises:
        ValueError: wrong shape, values outside [0, 1], or a negative / non-finite sigma.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise _invalid("mask.shape", tuple(mask.shape), "(B, 1, H, W)")
    mask = mask.float()
    if not bool(((mask >= 0) & (mask <= 1)).all()):
        raise _invalid("mask values", (float(mask.min()), float(mask.max())), "[0, 1]")
    if not math.isfinite(sigma_px) or sigma_px < 0:
        raise _invalid("sigma_px", sigma_px, "a finite number >= 0")
    h, w = grid
    if sigma_px > 0:
        radius = min(math.ceil(3 * sigma_px), min(mask.shape[-2:]) - 1)  # reflect padding needs radius < side
        if radius > 0:
            mask = gaussian_blur(mask, [2 * radius + 1] * 2, [float(sigma_px)] * 2)
    soft = F.adaptive_avg_pool2d(mask, (h, w)).clamp(0.0, 1.0)  # (B, 1, h, w), area average per token
    # A normalised blur kernel sums to 1 only up to rounding: snap values within _SNAP of 0 or 1 so that fully
    # marked / unmarked tokens are exactly editable / exactly kept (the unedited region then ends bit-exact).
    soft = torch.where(soft > 1.0 - _SNAP, 1.0, torch.where(soft < _SNAP, 0.0, soft))
    return soft.flatten(2).transpose(1, 2).contiguous()  # (B, T, 1)


def box_mask(box: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Binary (1, 1, height, width) float32 mask that is 1 inside ``box = (x0, y0, x1, y1)`` (pixels, end-exclusive).

    Raises:
        ValueError: a box that is empty or not inside the image.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise _invalid("box", tuple(box), f"(x0, y0, x1, y1) with 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}")
    mask = torch.zeros(1, 1, height, width)
    mask[..., y0:y1, x0:x1] = 1.0
    return mask


def editable_region(soft_mask: torch.Tensor, mode: str = "inside") -> torch.Tensor:
    """Editable weight from a softened mask: ``inside`` edits the marked region, ``outside`` everything else.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in MASK_MODES:
        raise _invalid("mask_mode", mode, str(list(MASK_MODES)))
    return soft_mask if mode == "inside" else 1.0 - soft_mask


# --------------------------------------------------------------------------------------------------------------
# SDEdit


def sdedit_start(steps: int, strength: float) -> int:
    """Start index on a grid of ``steps``: ``steps − ceil(strength·steps)``.

    Rounding up means any strength > 0 runs at least one step (case B15); strength 1 starts at t = 0 (pure noise);
    strength 0 gives ``steps`` (nothing to run). A product within 1e-9 of an integer counts as that integer, so that
    0.3·10 runs 3 steps, not 4.

    Raises:
        ValueError: ``strength`` outside [0, 1] (``steps`` is checked by :func:`svg.sampling.time_grid`).
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise _invalid("strength", strength, "a number in [0, 1]")
    product = strength * steps
    nearest = round(product)
    run = nearest if abs(product - nearest) < 1e-9 else math.ceil(product)
    return steps - run


def inversion_trajectory(x: torch.Tensor, *, steps: int, start: int, shift: float = 0.15,
                         source_label: int | None = None, solver: Solver | str = Solver.EULER,
                         num_classes: int = NULL_LABEL) -> RowPlan:
    """A plan that integrates the ODE backwards from the clean latent ``x`` (t = 1) to ``grid[start]``.

    It runs the ``steps − start`` steps of the shifted grid in reverse, unguided, with ``source_label`` (or the
    null class when None). Its final latent is the inverted latent at t_s, ready for :func:`edit_trajectory`
    (``start_latent``). Flow-matching ODEs are deterministic, so the inversion is exact up to discretisation.

    Args:
        x: (T, C) float32 clean latent (normalised tokens).

    Raises:
        ValueError: bad steps, start, shift or label.
    """
    grid = time_grid(steps, shift)
    if not 0 <= start < steps:
        raise _invalid("start", start, f"an integer in [0, {steps - 1}] (inversion needs at least one step)")
    return RowPlan(x.float(), source_label, grid[start:].flip(0), Guidance(), solver, num_classes=num_classes)


def edit_trajectory(x: torch.Tensor, label: int, *, strength: float, steps: int, shift: float = 0.15,
                    guidance: Guidance | None = None, solver: Solver | str = Solver.EULER, seed: int = 0,
                    index: int = 0, editable: torch.Tensor | None = None, start_latent: torch.Tensor | None = None,
                    mask_fade: float = 1.0, num_classes: int = NULL_LABEL) -> RowPlan:
    """The SDEdit plan of one image: from ``x`` noised to t_s, denoised to t = 1 toward ``label``.

    Args:
        x: (T, C) float32 clean source latent (normalised tokens).
        label: target class label in [0, num_classes).
        strength: in [0, 1]; see :func:`sdedit_start`. 0 returns a plan with no evaluations whose ``z`` is ``x`` itself.
        steps: N of the full shifted grid; the edit runs ``ceil(strength·N)`` of them.
        guidance, solver, shift: as for generation.
        seed, index: the noise ε is ``initial_noise(seed, index)`` (ignored when ``start_latent`` is given).
        editable: optional (T, 1) weight in [0, 1] (from :func:`soften_mask` / :func:`editable_region`); where it
            is < 1 the source latent is re-imposed after every step (see :class:`svg.sampling.EditState`).
        start_latent: optional (T, C) latent at t_s from :func:`inversion_trajectory`; its implied noise
            ``(z − t_s·x)/(1 − t_s)`` is what places ``x`` on the path for the mask.
        mask_fade: >= 0, how fast the soft band's pull toward the source fades (0: constant).

    Raises:
        ValueError: any argument outside its range (named in the message).
    """
    guidance = Guidance() if guidance is None else guidance
    grid = time_grid(steps, shift)
    start = sdedit_start(steps, strength)
    if x.dim() != 2:
        raise _invalid("x.shape", tuple(x.shape), "(T, C)")
    x = x.float()
    if start == steps:  # strength 0: nothing to run, the input comes back exactly
        return RowPlan(x, label, grid, guidance, solver, start=steps, num_classes=num_classes)
    t_s = float(grid[start])
    if start_latent is None:
        noise = initial_noise(seed, index, x.shape, x.device)
        z = (1.0 - t_s) * noise + t_s * x
    else:
        if start_latent.shape != x.shape:
            raise _invalid("start_latent.shape", tuple(start_latent.shape), f"{tuple(x.shape)} (as x)")
        z = start_latent.float()
        noise = (z - t_s * x) / (1.0 - t_s)  # t_s < 1 because start < steps
    state = None
    if editable is not None:
        if editable.shape != (x.shape[0], 1):
            raise _invalid("editable.shape", tuple(editable.shape), f"({x.shape[0]}, 1)")
        if not math.isfinite(mask_fade) or mask_fade < 0:
            raise _invalid("mask_fade", mask_fade, "a finite number >= 0")
        state = EditState(editable.float().to(x.device), x, noise, float(mask_fade))
    return RowPlan(z, label, grid, guidance, solver, start=start, num_classes=num_classes, edit=state)


@dataclass(frozen=True)
class EditResult:
    """Output of :func:`edit`: ``latents`` (B, T, C) float32; ``nfe`` evaluations per image (inversion included);
    ``model_rows`` forward rows in total; ``start`` the start index on the grid."""

    latents: torch.Tensor
    nfe: int
    model_rows: int
    start: int


def edit(model: Model, x: torch.Tensor, labels: torch.Tensor, *, strength: float, steps: int, shift: float = 0.15,
         guidance: Guidance | None = None, solver: Solver | str = Solver.EULER, seed: int = 0,
         editable: torch.Tensor | None = None, inversion: bool = False, source_labels: torch.Tensor | None = None,
         mask_fade: float = 1.0, num_classes: int = NULL_LABEL) -> EditResult:
    """Edit a batch of latents (library-level helper built on :class:`RowPlan` and ``run_rows``).

    Args:
        model: callable with ``SiT.forward``'s signature.
        x: (B, T, C) clean source latents (normalised tokens).
        labels: (B,) int64 target labels.
        strength, steps, shift, guidance, solver, mask_fade: see :func:`edit_trajectory`.
        seed: image b uses ``initial_noise(seed, b)`` (random-noise SDEdit only).
        editable: optional (B, T, 1) editable weight; None edits everywhere.
        inversion: start from the inverted latent instead of fresh noise.
        source_labels: optional (B,) labels for the inversion (None: the null class).

    Raises:
        ValueError: bad shapes or arguments (named in the message).
    """
    if x.dim() != 3 or labels.shape != x.shape[:1]:
        raise _invalid("x.shape/labels.shape", (tuple(x.shape), tuple(labels.shape)), "(B, T, C) and (B,)")
    start = sdedit_start(steps, strength)
    starts: list[torch.Tensor | None] = [None] * x.shape[0]
    rows = nfe = 0
    if inversion and start < steps:
        sources = [None] * x.shape[0] if source_labels is None else [int(v) for v in source_labels.tolist()]
        inverse = [inversion_trajectory(x[b], steps=steps, start=start, shift=shift, source_label=sources[b],
                                        num_classes=num_classes) for b in range(x.shape[0])]
        inverted = run_rows(model, inverse)
        starts, nfe, rows = list(inverted.latents), inverted.nfe[0], inverted.model_rows
    plans = [
        edit_trajectory(x[b], int(labels[b]), strength=strength, steps=steps, shift=shift, guidance=guidance,
                        solver=solver, seed=seed, index=b, editable=None if editable is None else editable[b],
                        start_latent=starts[b], mask_fade=mask_fade, num_classes=num_classes)
        for b in range(x.shape[0])
    ]
    edited = run_rows(model, plans)
    return EditResult(edited.latents, nfe + edited.nfe[0], rows + edited.model_rows, start)


# --------------------------------------------------------------------------------------------------------------
# Interpolation


def interpolate_noise(z_a: torch.Tensor, z_b: torch.Tensor, r: float, mode: str = "lerp") -> torch.Tensor:
    """Interpolate two start noises; r = 0 gives ``z_a`` and r = 1 gives ``z_b`` exactly.

    * ``lerp`` (paper Eq. 7): ``(1 − r)·z_a + r·z_b``. The reference's history script writes ``r·z1 + (1 − r)·z2``,
      i.e. the same with r ↔ 1 − r.
    * ``slerp`` (paper Eq. 8): ``sin((1 − r)θ)/sin θ·z_a + sin(rθ)/sin θ·z_b`` with θ the angle between the two
      (per sample over all of (T, C)); the cosine is clamped to [−1, 1] and when sin θ < 1e-6 (identical, parallel
      or antipodal noises) it falls back to lerp, so equal inputs return exactly that input and never NaN (B35).
    * ``vp`` (the reference's "nonlinear", variance-preserving): lerp divided by ``sqrt((1 − r)² + r² + 1e-8)``,
      which keeps unit variance for independent noises.

    Args:
        z_a, z_b: (T, C) or (B, T, C) float noises of the same shape.
        r: in [0, 1].

    Returns:
        Tensor of the inputs' shape and dtype.

    Raises:
        ValueError: mismatched shapes, r outside [0, 1] or an unknown mode.
    """
    if z_a.shape != z_b.shape or z_a.dim() not in (2, 3):
        raise _invalid("z_a.shape/z_b.shape", (tuple(z_a.shape), tuple(z_b.shape)), "equal, (T, C) or (B, T, C)")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
        raise _invalid("r", r, "a number in [0, 1]")
    if mode not in INTERPOLATION_MODES:
        raise _invalid("mode", mode, str(list(INTERPOLATION_MODES)))
    r = float(r)
    linear = torch.lerp(z_a, z_b, r)  # exact endpoints, and exactly z_a when z_a == z_b
    if mode == "lerp":
        return linear
    if mode == "vp":
        return linear / math.sqrt((1.0 - r) ** 2 + r**2 + 1e-8)
    batched = z_a.dim() == 3
    a = z_a.reshape(z_a.shape[0] if batched else 1, -1).double()
    b = z_b.reshape(a.shape).double()
    norms = a.norm(dim=1) * b.norm(dim=1)  # (B',)
    cos = ((a * b).sum(dim=1) / norms.clamp_min(1e-300)).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    parallel = (sin < _PARALLEL_SIN) | (norms == 0)  # (B',)
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    coef_a = (torch.sin((1.0 - r) * theta) / safe_sin).to(z_a.dtype)
    coef_b = (torch.sin(r * theta) / safe_sin).to(z_a.dtype)
    shape = (-1, 1, 1) if batched else (1, 1)
    spherical = coef_a.view(shape) * z_a + coef_b.view(shape) * z_b
    return torch.where(parallel.view(shape), linear, spherical)


def interpolate(model: Model, label: int, seed_a: int, seed_b: int, ratios: Sequence[float], *, steps: int,
                shift: float = 0.15, guidance: Guidance | None = None, solver: Solver | str = Solver.EULER,
                mode: str = "slerp", shape: Sequence[int] = (256, 392), device: torch.device | str | None = None,
                num_classes: int = NULL_LABEL) -> SampleResult:
    """Sample one image per ratio from the start noise interpolated between seeds ``seed_a`` and ``seed_b``.

    The end noises are ``initial_noise(seed_a, 0)`` and ``initial_noise(seed_b, 0)``, so ratio 0 reproduces a
    one-image generation with ``seed_a`` (and ratio 1 with ``seed_b``). Reference history script
    ``sample_dino_vit_interp.py`` (§6), with slerp added.

    Returns:
        :class:`~svg.sampling.SampleResult` with latents (len(ratios), T, C).

    Raises:
        ValueError: empty ratios, ratios outside [0, 1], bad seeds, mode or sampling arguments.
    """
    if len(ratios) == 0:
        raise _invalid("ratios", list(ratios), "a non-empty list of numbers in [0, 1]")
    z_a = initial_noise(seed_a, 0, shape, device)
    z_b = initial_noise(seed_b, 0, shape, device)
    noise = torch.stack([interpolate_noise(z_a, z_b, r, mode) for r in ratios])
    labels = torch.full((len(ratios),), label, dtype=torch.int64)
    return sample(model, noise, labels, steps=steps, guidance=guidance, shift=shift, solver=solver,
                  num_classes=num_classes)

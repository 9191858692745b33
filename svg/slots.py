"""The slot batch and the one sampling step: persistent device state for every image being sampled.

A :class:`SlotBatch` has ``slots`` slots (plus one scratch slot that absorbs padding rows). Admitting a
:class:`~svg.sampling.RowPlan` writes its start latent, edit state and its whole :func:`~svg.sampling.schedule`
(one row of numbers per model evaluation) into the slot's buffers; nothing about the image is decided in Python
again. Per step the host only says which slots run (:meth:`SlotBatch.layout`, a small int tensor) and
:func:`step` does the rest on the device: forward over those rows and their unconditional twins, guidance mix,
Euler/Heun update, edit re-impose, write-back. Engines compile :func:`step` (``torch.compile(fullgraph=True)``; on
CUDA one CUDA graph per row bucket, the buffers having static addresses); the eager engine, :func:`svg.sampling.sample`
and the parity runner run it uncompiled, so there is one implementation of the update.

Batch invariance: a row's numbers never depend on the other rows of the step or on its slot: everything is
row-wise except the model's GEMMs, whose per-row results do not depend on the row count for the token path
(M = rows·tokens) and are made so for the conditioning path by the SiT's fixed ``cond_rows`` (svg/sit.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from svg.sampling import NULL_LABEL, Evaluation, RowPlan, Stage

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Columns of the per-evaluation table, in Evaluation's order (label and stage stored as exact small floats).
_COLUMNS = ("t", "label", "mult", "w", "dt", "stage", "t_after", "keep_exp", "reimpose")


class SlotBatch(nn.Module):
    """Persistent per-slot sampling state on one device (buffers, so compiled graphs see fixed addresses).

    Args:
        slots: images that can be sampled at once (the server: ``max_rows``).
        tokens, channels: the latent's (T, C).
        max_evals: the most evaluations one image may take (Heun: 2 per step).
        num_classes: the null label of the twins.
        device: where the buffers live.

    Buffers (S = slots + 1; slot ``slots`` is scratch, written by padding and twin rows and never read back):
        x, x_start, v_prev: (S, T, C) float32 latent, and Heun's (z_i, v_i) of the step in progress.
        noise, reference: (S, T, C) float32 and editable (S, T, 1): the edit state (editable = 1: no edit).
        table: (S, max_evals, 9) float32, the slot's evaluations (columns ``_COLUMNS``).
    """

    def __init__(self, slots: int, tokens: int, channels: int, *, max_evals: int, num_classes: int = NULL_LABEL,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        if slots < 1 or max_evals < 1:
            raise ValueError(f"slots={slots}, max_evals={max_evals}: both must be >= 1")
        self.slots, self.scratch, self.num_classes = slots, slots, num_classes
        self.max_evals = max_evals
        self.device = torch.device(device)
        s = slots + 1
        latent = lambda: torch.zeros(s, tokens, channels, device=self.device)  # noqa: E731
        self.register_buffer("x", latent())
        self.register_buffer("x_start", latent())
        self.register_buffer("v_prev", latent())
        self.register_buffer("noise", latent())
        self.register_buffer("reference", latent())
        self.register_buffer("editable", torch.ones(s, tokens, 1, device=self.device))
        self.register_buffer("table", torch.zeros(s, max_evals, len(_COLUMNS), device=self.device))
        self._twin: list[list[bool] | None] = [None] * slots  # host mirror: which evaluations have a twin
        self._pos = [0] * slots  # host mirror: evaluations done

    def admit(self, slot: int, plan: RowPlan, evaluations: Sequence[Evaluation] | None = None) -> None:
        """Start ``plan`` in the free ``slot`` (its :meth:`RowPlan.evaluations` unless given).

        Raises:
            ValueError: the slot is out of range or busy, or the plan has more evaluations than ``max_evals``.
        """
        if not 0 <= slot < self.slots or self._twin[slot] is not None:
            raise ValueError(f"slot={slot} is not a free slot in [0, {self.slots})")
        evaluations = plan.evaluations() if evaluations is None else list(evaluations)
        if len(evaluations) > self.max_evals:
            raise ValueError(f"the plan has {len(evaluations)} evaluations; this slot batch holds {self.max_evals}")
        self.x[slot] = plan.z
        self.x_start[slot] = 0.0
        self.v_prev[slot] = 0.0
        edit = plan.edit
        self.noise[slot] = 0.0 if edit is None else edit.noise
        self.reference[slot] = 0.0 if edit is None else edit.reference
        self.editable[slot] = 1.0 if edit is None else edit.editable
        if evaluations:
            rows = torch.tensor([[float(v) for v in e[:2]] + [e.mult, e.w, e.dt, float(e.stage), e.t_after,
                                                              e.keep_exp, e.reimpose] for e in evaluations])
            self.table[slot, :len(evaluations)] = rows.to(self.device)
        self._twin[slot] = [e.twin for e in evaluations]
        self._pos[slot] = 0

    def retire(self, slot: int) -> torch.Tensor:
        """Free ``slot`` and return its latent (T, C) (a view, valid until the slot is admitted again)."""
        if not 0 <= slot < self.slots or self._twin[slot] is None:
            raise ValueError(f"slot={slot} is not an occupied slot in [0, {self.slots})")
        self._twin[slot] = None
        return self.x[slot]

    def occupied(self) -> list[int]:
        """The slots holding an image, ascending."""
        return [s for s, twin in enumerate(self._twin) if twin is not None]

    def done(self, slot: int) -> bool:
        """True when the image in ``slot`` has run all its evaluations."""
        return self._pos[slot] >= len(self._twin[slot])

    def layout(self, slots: Sequence[int]) -> torch.Tensor:
        """The forward rows of one step of ``slots`` (each must be occupied and not done): a CPU int64 (4, R).

        Rows: one conditional row per slot in the given order, then one unconditional twin per slot whose current
        evaluation has one. Rows are ``(slot, evaluation index, row of its twin or −1, 1 if conditional)``.
        """
        pos = [self._pos[s] for s in slots]
        twins = [k for k, s in enumerate(slots) if self._twin[s][pos[k]]]
        n = len(slots)
        twin_row = [-1] * n
        for j, k in enumerate(twins):
            twin_row[k] = n + j
        sel = list(slots) + [slots[k] for k in twins]
        return torch.tensor([sel, pos + [pos[k] for k in twins], twin_row + [-1] * len(twins),
                             [1] * n + [0] * len(twins)], dtype=torch.int64)

    def padding(self, rows: int) -> torch.Tensor:
        """``rows`` layout columns that run the scratch slot and write nothing back: (4, rows) int64."""
        return torch.tensor([[self.scratch], [0], [-1], [0]], dtype=torch.int64).expand(4, rows)

    def advance(self, slots: Sequence[int]) -> list[int]:
        """Record that ``slots`` ran one evaluation; returns those that are now done."""
        for s in slots:
            self._pos[s] += 1
        return [s for s in slots if self.done(s)]


def step(model: Model, slots: SlotBatch, layout: torch.Tensor) -> None:
    """One model evaluation for the rows of ``layout`` (from :meth:`SlotBatch.layout`, maybe padded), in place.

    No host syncs, no data-dependent Python: ``torch.compile(fullgraph=True)`` and CUDA graphs capture it whole.
    Maths (svg_reference.md §5): with the row's velocity v_c and its twin's v_u,
    ``v = v_u + w·(mult·v_c − v_u)`` when it has a twin, else ``mult·v_c``; then Euler ``z + dt·v``, or Heun's
    predictor (same, remembering z_i and v_i) and corrector ``z_i + dt/2·(v_i + v)``; then, after a completed
    step of an edit row, ``z ← lerp(z, (1 − t)·noise + t·reference, (1 − editable)^keep_exp)``.

    Args:
        model: ``(x (R, T, C) f32, t (R,) f32, y (R,) i64) -> (R, T, ≥C)``; the first C channels are the velocity.
        layout: (4, R) int64 on the slots' device: slot, evaluation index, twin row (−1: none), conditional flag.
    """
    sel, pos, twin, cond = layout.unbind(0)  # (R,) each
    # index_select rather than advanced indexing: the same gather, without the generic indexing kernel's cost
    coef = slots.table.flatten(0, 1).index_select(0, sel * slots.max_evals + pos)  # (R, 9)
    t, label, mult, w, dt, stage, t_after, keep_exp, reimpose = coef.unbind(1)  # (R,) each
    x = slots.x.index_select(0, sel)  # (R, T, C)
    y = torch.where(cond.bool(), label.long(), slots.num_classes)
    v = model(x, t, y)[..., : x.shape[-1]].float() * mult[:, None, None]  # (R, T, C)
    rows = torch.arange(sel.shape[0], device=sel.device)
    guided = (twin >= 0)[:, None, None]
    v_u = v.index_select(0, torch.where(twin >= 0, twin, rows))  # the twin's velocity (its own where none)
    v = torch.where(guided, v_u + w[:, None, None] * (v - v_u), v)
    dt, stage = dt[:, None, None], stage[:, None, None]
    predict = stage == float(Stage.PREDICT)
    x_start = torch.where(predict, x, slots.x_start.index_select(0, sel))  # Heun: z_i, v_i of the current step
    v_prev = torch.where(predict, v, slots.v_prev.index_select(0, sel))
    moved = torch.where(stage == float(Stage.CORRECT), x_start + (0.5 * dt) * (v_prev + v), x + dt * v)
    t_after = t_after[:, None, None]
    on_path = (1.0 - t_after) * slots.noise.index_select(0, sel) + t_after * slots.reference.index_select(0, sel)
    keep = (1.0 - slots.editable.index_select(0, sel)).pow(keep_exp[:, None, None]) * reimpose[:, None, None]
    moved = torch.lerp(moved, on_path, keep)
    dest = torch.where(cond.bool(), sel, slots.scratch)  # twins and padding write to scratch
    slots.x.index_copy_(0, dest, moved)
    slots.x_start.index_copy_(0, dest, x_start)
    slots.v_prev.index_copy_(0, dest, v_prev)

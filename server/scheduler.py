"""Step-level continuous batching for diffusion requests: the request lifecycle, pure Python, no torch.

A request becomes ``rows`` (one per image). Every DiT step (one model evaluation of every running row) the worker
asks :meth:`Scheduler.plan` which rows run and in which slot of its slot batch, runs the step, and reports back
with ONE :meth:`Scheduler.update` call (rows that finished, requests that failed). The scheduler never looks at
timesteps, classes or guidance, only at costs: it owns the whole lifecycle

    WAITING -> RUNNING -> FINISHED | CANCELLED | DEADLINE | FAILED        (WAITING -> CANCELLED | DEADLINE too)

**Row cost.** A row's forward rows per evaluation: 2 while its guidance needs the unconditional twin, 1 otherwise.
``submit`` takes each row's cost either as a constant (1 or 2) or as its exact per-evaluation schedule (from
``svg.sampling.evaluation_costs``: ``late`` guidance is 1 then 2, ``cfg_star`` starts with 1, Heun has two
evaluations per step), so :attr:`StepPlan.cost` is the exact forward row count of each step. Admission reserves a
row's peak cost, so a running row never pushes a later step past ``max_rows``.

Policy (the vLLM-v1 / Triton "iterative sequence" idea, applied to a DiT):

* **Admission is FIFO over rows.** Waiting rows are admitted strictly in arrival order while their peak cost fits
  under ``max_rows``; a row that does not fit blocks the rows behind it (no backfill), so no request starves behind a
  stream of smaller ones: each running row finishes in a bounded number of steps, which frees room for the head.
* **Every admitted row runs in every step** until the worker reports it finished, so a request's latency does not
  depend on what joins later.
* **Slots.** Each running row holds one slot in ``[0, max_rows)`` (a row costs at least 1, so they never run out)
  from admission until it finishes or its request leaves; the worker's slot batch mirrors ``StepPlan.slots``.
* **Batch wait.** When nothing is running and the waiting rows do not fill ``max_rows``, the first step starts at
  the latest ``max_wait_s`` after the oldest waiting request arrived. With rows already running, new rows join at
  the next step boundary without waiting.
* **Bounded queue.** At most ``max_queue`` requests may wait (not yet started); one more raises :class:`QueueFull` at
  once, with a ``retry_after_s`` hint.
* **Deadlines and cancellation** take effect at the next step boundary: the request's rows are dropped from the plan
  and it is reported in ``StepPlan.dropped`` with its reason. A failed request (``update(failed=...)``) leaves at once.
* ``max_requests_per_step`` (optional) caps how many distinct requests share a step; 1 turns batching off (used by
  the benchmark).

Thread safety: every public method takes one lock, so the HTTP event loop may submit and cancel while the worker
thread plans and updates.

Example (fake clock)::

    s = Scheduler(max_rows=4, max_queue=8, max_wait_s=0.01, clock=lambda: 0.0)
    s.submit("a", costs=[2, [1, 2, 2]])     # a constant-cost guided image and a 3-step late-guidance image
    plan = s.plan()                         # rows [("a", 0), ("a", 1)], slots {("a", 0): 0, ("a", 1): 1}, cost 3
    s.update(finished=[("a", 0)])           # -> [] (row 1 still runs)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum

RowKey = tuple[Hashable, int]  # (request id, image index within the request)
RowCost = int | Sequence[int]  # a constant cost, or the exact cost of each evaluation


class RequestState(str, Enum):
    """Where a request is in its life (terminal states are remembered for the last ``_HISTORY`` requests)."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    DEADLINE = "deadline"
    FAILED = "failed"


class DropReason(str, Enum):
    """Why a request left at a step boundary without finishing (reported in :attr:`StepPlan.dropped`)."""

    CANCELLED = "cancelled"
    DEADLINE = "deadline"


_HISTORY = 4096  # terminal states kept for state(); older ones are forgotten (state() -> None)


class QueueFull(RuntimeError):
    """Raised by :meth:`Scheduler.submit` when ``max_queue`` requests already wait.

    Attributes:
        retry_after_s: a whole number of seconds after which a retry is likely to be admitted (>= 1).
    """

    def __init__(self, waiting: int, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"queue full: {waiting} requests waiting, max_queue={max_queue}")
        self.retry_after_s = retry_after_s


@dataclass
class _Row:
    costs: tuple[int, ...]  # per evaluation; a constant cost is a 1-tuple repeated forever
    step: int = 0  # evaluations done
    slot: int = -1

    @property
    def cost(self) -> int:
        return self.costs[min(self.step, len(self.costs) - 1)]

    @property
    def peak(self) -> int:
        return max(self.costs)


@dataclass
class _Request:
    request_id: Hashable
    rows: list[_Row]
    arrival: float
    deadline: float | None
    next_row: int = 0  # index of the first row not yet admitted
    finished: int = 0
    started_at: float | None = None
    drop: DropReason | None = None

    @property
    def waiting_rows(self) -> int:
        return len(self.rows) - self.next_row


@dataclass(frozen=True)
class StepPlan:
    """What the worker does at one step boundary.

    Attributes:
        rows: rows to evaluate in this step, in admission order (oldest request first).
        admitted: the subset of ``rows`` that joined at this boundary (the worker admits them to their slots).
        started: request ids whose first row was admitted now, with their queue wait in seconds.
        dropped: requests removed now (cancelled or past their deadline) with the reason; their rows are gone.
        cost: forward rows this step runs (exact: twins counted where the row's schedule has one), <= ``max_rows``.
        wait_s: when ``rows`` is empty, how long the worker may sleep before planning again (``None``: idle).
        slots: the slot of every row in ``rows``; a slot absent here that the worker still holds is free again.
    """

    rows: list[RowKey]
    admitted: list[RowKey]
    started: list[tuple[Hashable, float]]
    dropped: list[tuple[Hashable, DropReason]]
    cost: int
    wait_s: float | None
    slots: dict[RowKey, int] = field(default_factory=dict)


class Scheduler:
    """Plans DiT steps over rows under a row budget; see the module docstring for the policy.

    Args:
        max_rows: forward rows per step (>= 2 so one guided row fits); also the number of slots.
        max_queue: requests allowed to wait before new ones are refused (>= 1).
        max_wait_s: longest wait, seconds, before a partially filled first batch starts (>= 0).
        max_requests_per_step: cap on distinct requests per step, or ``None`` (no cap). 1 disables batching.
        clock: monotonic clock in seconds (inject a fake one in tests).
        step_time_hint_s: initial estimate of one step's wall time, used only for ``retry_after_s``.

    Raises:
        ValueError: on a bound outside its range, naming it.
    """

    def __init__(
        self,
        *,
        max_rows: int,
        max_queue: int,
        max_wait_s: float,
        max_requests_per_step: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        step_time_hint_s: float = 0.05,
    ) -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows={max_rows}: must be >= 2 (a guided row needs 2)")
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue}: must be >= 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s={max_wait_s}: must be >= 0")
        if max_requests_per_step is not None and max_requests_per_step < 1:
            raise ValueError(f"max_requests_per_step={max_requests_per_step}: must be >= 1 or None")
        self.max_rows = max_rows
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.max_requests_per_step = max_requests_per_step
        self.clock = clock
        self._lock = threading.Lock()
        self._requests: dict[Hashable, _Request] = {}
        self._order: deque[Hashable] = deque()  # arrival order of requests with rows left to admit
        self._running: dict[RowKey, _Row] = {}  # admitted, unfinished rows, in admission order
        self._free_slots: list[int] = list(range(max_rows - 1, -1, -1))  # a stack: the lowest slot is reused first
        self._planned: list[RowKey] = []  # the rows of the last plan (they advance one evaluation on update)
        self._history: OrderedDict[Hashable, RequestState] = OrderedDict()
        self._step_time_s = step_time_hint_s
        self._last_plan_at: float | None = None

    # -- requests ---------------------------------------------------------------------------------------------------
    def submit(self, request_id: Hashable, costs: Sequence[RowCost], deadline: float | None = None) -> None:
        """Queue a request of ``len(costs)`` rows.

        Args:
            request_id: any hashable id, unique among live requests.
            costs: per row, either a constant cost (1 unguided, 2 guided) or the row's exact cost at each
                evaluation, a non-empty sequence of 1s and 2s.
            deadline: absolute time on ``clock`` after which the request is dropped (``None``: never).

        Raises:
            QueueFull: ``max_queue`` requests are already waiting (raised at once, nothing is queued).
            ValueError: duplicate id, empty ``costs`` or a cost outside 1..2.
        """
        rows = [_Row(_row_costs(c)) for c in costs]
        if not rows:
            raise ValueError("costs is empty: a request needs at least one row")
        with self._lock:
            if request_id in self._requests:
                raise ValueError(f"request_id={request_id!r} is already queued or running")
            waiting = self._waiting_locked()
            if waiting >= self.max_queue:
                raise QueueFull(waiting, self.max_queue, self._retry_after_locked())
            self._requests[request_id] = _Request(request_id, rows, self.clock(), deadline)
            self._history.pop(request_id, None)
            self._order.append(request_id)

    def cancel(self, request_id: Hashable, reason: DropReason = DropReason.CANCELLED) -> bool:
        """Drop a request at the next step boundary. Returns False when it is unknown or already leaving."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.drop is not None:
                return False
            req.drop = reason
            return True

    def update(self, finished: Sequence[RowKey] = (), failed: Sequence[Hashable] = ()) -> list[Hashable]:
        """Report the step that ran the last plan: every planned row did one evaluation.

        Args:
            finished: rows whose trajectories are now done; their slots are free.
            failed: request ids that failed (e.g. non-finite output); they leave now with all their rows.

        Returns:
            The ids of requests that have now finished every row (state FINISHED), in report order.
        """
        done: list[Hashable] = []
        with self._lock:
            for key in self._planned:
                row = self._running.get(key)
                if row is not None:
                    row.step += 1
            self._planned = []
            for rid in failed:
                if rid in self._requests:
                    self._remove_locked(rid, RequestState.FAILED)
            for key in finished:
                row = self._running.pop(key, None)
                if row is None:
                    continue  # a row of a request that was just failed or dropped
                self._free_slots.append(row.slot)
                req = self._requests[key[0]]
                req.finished += 1
                if req.finished == len(req.rows):
                    self._remove_locked(key[0], RequestState.FINISHED)
                    done.append(key[0])
        return done

    def finish(self, rows: Sequence[RowKey]) -> list[Hashable]:
        """``update(finished=rows)``: kept for callers that report no failures."""
        return self.update(finished=rows)

    # -- planning ---------------------------------------------------------------------------------------------------
    def plan(self) -> StepPlan:
        """Decide the rows of the next DiT step (see the module docstring). Call once per step boundary."""
        with self._lock:
            now = self.clock()
            if self._last_plan_at is not None and self._running:
                # Exponential moving average of the step period, for Retry-After only.
                self._step_time_s = 0.8 * self._step_time_s + 0.2 * max(now - self._last_plan_at, 1e-6)
            self._last_plan_at = now
            dropped = self._drop_locked(now)
            admitted, started = self._admit_locked(now)
            self._planned = list(self._running)
            if not self._running:
                return StepPlan([], [], started, dropped, 0, self._wait_hint_locked(now))
            cost = sum(row.cost for row in self._running.values())
            slots = {key: row.slot for key, row in self._running.items()}
            return StepPlan(list(self._running), admitted, started, dropped, cost, None, slots)

    def _drop_locked(self, now: float) -> list[tuple[Hashable, DropReason]]:
        dropped = []
        for rid, req in list(self._requests.items()):
            if req.drop is None and req.deadline is not None and now >= req.deadline:
                req.drop = DropReason.DEADLINE
            if req.drop is not None:
                dropped.append((rid, req.drop))
                state = RequestState.DEADLINE if req.drop is DropReason.DEADLINE else RequestState.CANCELLED
                self._remove_locked(rid, state)
        return dropped

    def _remove_locked(self, rid: Hashable, state: RequestState) -> None:
        """Forget a request (and free its slots), remembering its terminal ``state``."""
        self._requests.pop(rid)
        for key in [k for k in self._running if k[0] == rid]:
            self._free_slots.append(self._running.pop(key).slot)
        if rid in self._order:
            self._order.remove(rid)
        self._history[rid] = state
        while len(self._history) > _HISTORY:
            self._history.popitem(last=False)

    def _admit_locked(self, now: float) -> tuple[list[RowKey], list[tuple[Hashable, float]]]:
        admitted: list[RowKey] = []
        started: list[tuple[Hashable, float]] = []
        if not self._order or (not self._running and not self._batch_ready_locked(now)):
            return admitted, started
        reserved = sum(row.peak for row in self._running.values())
        active = {key[0] for key in self._running}
        while self._order:
            rid = self._order[0]
            req = self._requests[rid]
            if (rid not in active and self.max_requests_per_step is not None
                    and len(active) >= self.max_requests_per_step):
                break
            row = req.rows[req.next_row]
            if reserved + row.peak > self.max_rows:
                break  # FIFO: the head waits for room; nobody overtakes it
            key = (rid, req.next_row)
            row.slot = self._free_slots.pop()
            self._running[key] = row
            reserved += row.peak
            req.next_row += 1
            admitted.append(key)
            active.add(rid)
            if req.started_at is None:
                req.started_at = now
                started.append((rid, now - req.arrival))
            if req.waiting_rows == 0:
                self._order.popleft()
        return admitted, started

    def _batch_ready_locked(self, now: float) -> bool:
        """With nothing running: start when the waiting rows fill a step or the oldest has waited max_wait_s."""
        waiting_cost = sum(row.peak for rid in self._order for row in self._requests[rid].rows[
            self._requests[rid].next_row:])
        oldest = self._requests[self._order[0]].arrival
        return waiting_cost >= self.max_rows or now - oldest >= self.max_wait_s

    def _wait_hint_locked(self, now: float) -> float | None:
        if not self._order:
            return None
        oldest = self._requests[self._order[0]].arrival
        return max(0.0, oldest + self.max_wait_s - now)

    def _waiting_locked(self) -> int:
        return sum(1 for rid in self._order if self._requests[rid].started_at is None)

    def _retry_after_locked(self) -> int:
        """Whole seconds until roughly one waiting request's worth of rows has been served (>= 1)."""
        waiting_rows = sum(self._requests[rid].waiting_rows for rid in self._order)
        batches = max(1.0, waiting_rows / max(1, self.max_rows))
        # 25 steps: the default step count of a request (reference sampling setting).
        return max(1, int(batches * self._step_time_s * 25 + 0.999))

    # -- introspection ----------------------------------------------------------------------------------------------
    def state(self, request_id: Hashable) -> RequestState | None:
        """The request's state, or ``None`` when it was never seen (or its terminal state was forgotten)."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None:
                return RequestState.WAITING if req.started_at is None else RequestState.RUNNING
            return self._history.get(request_id)

    def queue_depth(self) -> int:
        """Requests admitted to the queue whose first row has not started yet."""
        with self._lock:
            return self._waiting_locked()

    def inflight(self) -> int:
        """Requests queued or running (not finished, not dropped)."""
        with self._lock:
            return len(self._requests)

    def running_cost(self) -> int:
        """Forward rows the running rows take at their next evaluation."""
        with self._lock:
            return sum(row.cost for row in self._running.values())


def _row_costs(cost: RowCost) -> tuple[int, ...]:
    costs = (cost,) if isinstance(cost, int) else tuple(cost)
    if not costs:
        raise ValueError("a row's cost schedule is empty: it needs at least one evaluation")
    bad = [c for c in costs if isinstance(c, bool) or c not in (1, 2)]
    if bad:
        raise ValueError(f"costs contains {bad[0]!r}: each row costs 1 (unguided) or 2 (guided) per evaluation")
    return costs

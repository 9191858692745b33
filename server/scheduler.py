"""Step-level continuous batching for diffusion requests: pure Python bookkeeping, no torch.

A request becomes ``rows`` (one per image). A row costs 2 model rows per DiT step when it uses guidance (its
unconditional twin) and 1 otherwise. Every DiT step the worker asks :meth:`Scheduler.plan` which rows run; rows join
and leave the running batch at step boundaries, so one step may mix timesteps, classes, guidance scales, step counts
and request kinds (generate, edit, interpolate): the scheduler never looks at any of them, only at costs.

Policy (the vLLM-v1 / Triton "iterative sequence" idea, applied to a DiT):

* **Admission is FIFO over rows.** Waiting rows are admitted strictly in arrival order while their cost fits under
  ``max_rows``; a row that does not fit blocks the rows behind it (no backfill), so no request starves behind a stream
  of smaller ones: each running row finishes in a bounded number of steps, which frees room for the head.
* **Every admitted row runs in every step** until the worker reports it finished, so a request's latency does not
  depend on what joins later.
* **Batch wait.** When nothing is running and the waiting rows do not fill ``max_rows``, the first step starts at
  the latest ``max_wait_s`` after the oldest waiting request arrived. With rows already running, new rows join at
  the next step boundary without waiting.
* **Bounded queue.** At most ``max_queue`` requests may wait (not yet started); one more raises :class:`QueueFull` at
  once, with a ``retry_after_s`` hint.
* **Deadlines and cancellation** take effect at the next step boundary: the request's rows are dropped from the plan
  and it is reported in ``StepPlan.dropped`` with its reason.
* ``max_requests_per_step`` (optional) caps how many distinct requests share a step; 1 turns batching off (used by
  the benchmark).

Thread safety: every public method takes one lock, so the HTTP event loop may submit and cancel while the worker
thread plans and finishes rows.

Example (fake clock)::

    s = Scheduler(max_rows=4, max_queue=8, max_wait_s=0.01, clock=lambda: 0.0)
    s.submit("a", costs=[2, 2])           # two guided images
    plan = s.plan()                        # StepPlan(rows=[("a", 0), ("a", 1)], ...)
    s.finish([("a", 0), ("a", 1)])         # -> ["a"] when the request has no rows left
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum

RowKey = tuple[Hashable, int]  # (request id, image index within the request)


class DropReason(str, Enum):
    """Why a request left the scheduler without finishing."""

    CANCELLED = "cancelled"
    DEADLINE = "deadline"


class QueueFull(RuntimeError):
    """Raised by :meth:`Scheduler.submit` when ``max_queue`` requests already wait.

    Attributes:
        retry_after_s: a whole number of seconds after which a retry is likely to be admitted (>= 1).
    """

    def __init__(self, waiting: int, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"queue full: {waiting} requests waiting, max_queue={max_queue}")
        self.retry_after_s = retry_after_s


@dataclass
class _Request:
    request_id: Hashable
    costs: list[int]
    arrival: float
    deadline: float | None
    next_row: int = 0  # index of the first row not yet admitted
    running: set[int] = field(default_factory=set)
    finished: int = 0
    started_at: float | None = None
    drop: DropReason | None = None

    @property
    def waiting_rows(self) -> int:
        return len(self.costs) - self.next_row


@dataclass(frozen=True)
class StepPlan:
    """What the worker does at one step boundary.

    Attributes:
        rows: rows to evaluate in this step, in admission order (oldest request first).
        admitted: the subset of ``rows`` that joined at this boundary (the worker creates their trajectories).
        started: request ids whose first row was admitted now, with their queue wait in seconds.
        dropped: requests removed now (cancelled or past their deadline) with the reason; their rows are gone.
        cost: model rows this step will run (guided rows count twice), always <= ``max_rows``.
        wait_s: when ``rows`` is empty, how long the worker may sleep before planning again (``None``: idle).
    """

    rows: list[RowKey]
    admitted: list[RowKey]
    started: list[tuple[Hashable, float]]
    dropped: list[tuple[Hashable, DropReason]]
    cost: int
    wait_s: float | None


class Scheduler:
    """Plans DiT steps over rows under a row budget; see the module docstring for the policy.

    Args:
        max_rows: model rows per step (>= 2 so one guided row fits).
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
        self._running: list[RowKey] = []  # admitted, unfinished rows, in admission order
        self._running_cost = 0
        self._pending_drops: list[tuple[Hashable, DropReason]] = []
        self._step_time_s = step_time_hint_s
        self._last_plan_at: float | None = None

    # -- requests ---------------------------------------------------------------------------------------------------
    def submit(self, request_id: Hashable, costs: Sequence[int], deadline: float | None = None) -> None:
        """Queue a request of ``len(costs)`` rows; ``costs[i]`` is 2 for a guided row, 1 otherwise.

        Args:
            request_id: any hashable id, unique among live requests.
            costs: per-row cost, each 1 or 2, at most ``max_rows``.
            deadline: absolute time on ``clock`` after which the request is dropped (``None``: never).

        Raises:
            QueueFull: ``max_queue`` requests are already waiting (raised at once, nothing is queued).
            ValueError: duplicate id, empty ``costs`` or a cost outside 1..2.
        """
        costs = list(costs)
        if not costs:
            raise ValueError("costs is empty: a request needs at least one row")
        bad = [c for c in costs if c not in (1, 2)]
        if bad:
            raise ValueError(f"costs contains {bad[0]!r}: each row costs 1 (unguided) or 2 (guided)")
        with self._lock:
            if request_id in self._requests:
                raise ValueError(f"request_id={request_id!r} is already queued or running")
            waiting = sum(1 for rid in self._order if self._requests[rid].started_at is None)
            if waiting >= self.max_queue:
                raise QueueFull(waiting, self.max_queue, self._retry_after_locked())
            self._requests[request_id] = _Request(request_id, costs, self.clock(), deadline)
            self._order.append(request_id)

    def cancel(self, request_id: Hashable, reason: DropReason = DropReason.CANCELLED) -> bool:
        """Drop a request at the next step boundary. Returns False when it is unknown or already finished."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.drop is not None:
                return False
            req.drop = reason
            return True

    def finish(self, rows: Sequence[RowKey]) -> list[Hashable]:
        """Report rows whose trajectories are done. Returns the ids of requests that have now finished every row."""
        done: list[Hashable] = []
        with self._lock:
            finished = set(rows)
            keep = []
            for key in self._running:
                if key in finished:
                    req = self._requests[key[0]]
                    self._running_cost -= req.costs[key[1]]
                    req.running.discard(key[1])
                    req.finished += 1
                    if req.finished == len(req.costs):
                        del self._requests[key[0]]
                        done.append(key[0])
                else:
                    keep.append(key)
            self._running = keep
        return done

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
            if not self._running:
                wait = self._wait_hint_locked(now)
                return StepPlan([], [], started, dropped, 0, wait)
            return StepPlan(list(self._running), admitted, started, dropped, self._running_cost, None)

    def _drop_locked(self, now: float) -> list[tuple[Hashable, DropReason]]:
        dropped = []
        for rid, req in list(self._requests.items()):
            if req.drop is None and req.deadline is not None and now >= req.deadline:
                req.drop = DropReason.DEADLINE
            if req.drop is not None:
                dropped.append((rid, req.drop))
                del self._requests[rid]
        if dropped:
            gone = {rid for rid, _ in dropped}
            keep = []
            for key in self._running:
                if key[0] not in gone:
                    keep.append(key)
            self._running = keep
            self._running_cost = sum(self._requests[k[0]].costs[k[1]] for k in self._running)
            self._order = deque(rid for rid in self._order if rid not in gone)
        return dropped

    def _admit_locked(self, now: float) -> tuple[list[RowKey], list[tuple[Hashable, float]]]:
        admitted: list[RowKey] = []
        started: list[tuple[Hashable, float]] = []
        if not self._order:
            return admitted, started
        if not self._running and not self._batch_ready_locked(now):
            return admitted, started
        active = {k[0] for k in self._running}
        while self._order:
            rid = self._order[0]
            req = self._requests[rid]
            if rid not in active and self.max_requests_per_step is not None \
                    and len(active) >= self.max_requests_per_step:
                break
            cost = req.costs[req.next_row]
            if self._running_cost + cost > self.max_rows:
                break  # FIFO: the head waits for room; nobody overtakes it
            key = (rid, req.next_row)
            self._running.append(key)
            self._running_cost += cost
            req.running.add(req.next_row)
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
        waiting_cost = sum(sum(self._requests[rid].costs[self._requests[rid].next_row:]) for rid in self._order)
        oldest = self._requests[self._order[0]].arrival
        return waiting_cost >= self.max_rows or now - oldest >= self.max_wait_s

    def _wait_hint_locked(self, now: float) -> float | None:
        if not self._order:
            return None
        oldest = self._requests[self._order[0]].arrival
        return max(0.0, oldest + self.max_wait_s - now)

    def _retry_after_locked(self) -> int:
        """Whole seconds until roughly one waiting request's worth of rows has been served (>= 1)."""
        waiting_rows = sum(self._requests[rid].waiting_rows for rid in self._order)
        batches = max(1.0, waiting_rows / max(1, self.max_rows))
        # 25 steps: the default step count of a request (reference sampling setting).
        return max(1, int(batches * self._step_time_s * 25 + 0.999))

    # -- introspection ----------------------------------------------------------------------------------------------
    def queue_depth(self) -> int:
        """Requests admitted to the queue whose first row has not started yet."""
        with self._lock:
            return sum(1 for rid in self._order if self._requests[rid].started_at is None)

    def inflight(self) -> int:
        """Requests queued or running (not finished, not dropped)."""
        with self._lock:
            return len(self._requests)

    def running_cost(self) -> int:
        """Model rows the currently admitted rows use per step."""
        with self._lock:
            return self._running_cost

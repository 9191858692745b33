"""Property-based scheduler tests (Hypothesis): random arrivals, costs 1 and 2, cancellations and deadlines against a
fake clock, checked step by step against a small independent model of the policy (server/scheduler.py's docstring):

* every plan costs at most ``max_rows`` and its cost is the sum of its rows' costs;
* admission is strictly FIFO over rows with no backfill: the rows admitted at a boundary are exactly the longest
  prefix of the waiting rows that fits; a row that does not fit blocks every row behind it;
* every admitted row runs in every step until the worker reports it finished (so it finishes after exactly its own
  step count: no starvation once admitted), and everything drains in a bounded number of steps;
* a cancelled or expired request's rows are gone from the very next plan, which reports it in ``dropped``;
* ``submit`` raises ``QueueFull`` exactly when ``max_queue`` requests are waiting (not yet started);
* ``queue_depth()`` and ``inflight()`` agree with the model.

The scheduler's row-reporting call is behind :func:`report_finished` (one line to change when the worker contract
moves from ``finish(rows)`` to ``update(finished, failed)``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.scheduler import DropReason, QueueFull, Scheduler


def report_finished(sched: Scheduler, rows: list) -> None:
    """Tell the scheduler these rows' trajectories are done (the worker's only reporting call)."""
    sched.finish(rows)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Req:
    costs: list[int]
    steps: int
    arrival: float
    deadline: float | None
    admitted: int = 0  # rows admitted so far (rows are admitted in index order)
    done_rows: int = 0
    cancelled: bool = False
    progress: dict = field(default_factory=dict)


class Model:
    """The policy, written from the scheduler's documentation; the scheduler under test must agree with it."""

    def __init__(self, sched: Scheduler, clock: FakeClock, step_s: float) -> None:
        self.sched, self.clock, self.step_s = sched, clock, step_s
        self.reqs: dict[str, Req] = {}
        self.waiting: deque = deque()  # (rid, row) not yet admitted, arrival order
        self.running: list = []  # admitted, unfinished rows
        self.n = 0
        self.log: list[str] = []

    # -- helpers
    def cost(self, key) -> int:
        return self.reqs[key[0]].costs[key[1]]

    def waiting_requests(self, include_doomed: bool) -> int:
        now = self.clock()
        count = 0
        for rid, r in self.reqs.items():
            doomed = r.cancelled or (r.deadline is not None and now >= r.deadline)
            if r.admitted == 0 and (include_doomed or not doomed):
                count += 1
        return count

    # -- operations
    def submit(self, costs: list[int], steps: int, deadline_in: float | None) -> None:
        rid = f"r{self.n}"
        self.n += 1
        deadline = None if deadline_in is None else self.clock() + deadline_in
        # Requests cancelled or expired but not yet planned may still hold their queue slot until the next boundary;
        # between those two counts either answer is allowed, outside it the answer is exact.
        lo, hi = self.waiting_requests(False), self.waiting_requests(True)
        try:
            self.sched.submit(rid, costs, deadline)
        except QueueFull as exc:
            assert hi >= self.sched.max_queue, (lo, hi, self.log)
            assert exc.retry_after_s >= 1
            self.log.append(f"submit {rid} -> QueueFull")
            return
        assert lo < self.sched.max_queue, (lo, hi, self.log)
        self.log.append(f"submit {rid} {costs} steps={steps} deadline={deadline}")
        self.reqs[rid] = Req(list(costs), steps, self.clock(), deadline)
        self.waiting.extend((rid, i) for i in range(len(costs)))

    def cancel(self, pick: int) -> None:
        live = [rid for rid, r in self.reqs.items() if not r.cancelled]
        if not live:
            assert self.sched.cancel("unknown") is False
            return
        rid = live[pick % len(live)]
        self.log.append(f"cancel {rid}")
        assert self.sched.cancel(rid) is True
        self.reqs[rid].cancelled = True

    def tick(self, dt: float) -> None:
        self.clock.t += dt

    def step(self) -> None:
        now = self.clock()
        plan = self.sched.plan()
        self.log.append(f"plan t={now:.3f} rows={plan.rows} admitted={plan.admitted} dropped={plan.dropped}")

        # Drops: cancelled first, else past the deadline; their rows vanish from this very plan.
        expected_drops = {}
        for rid, r in self.reqs.items():
            if r.cancelled:
                expected_drops[rid] = DropReason.CANCELLED
            elif r.deadline is not None and now >= r.deadline:
                expected_drops[rid] = DropReason.DEADLINE
        assert dict(plan.dropped) == expected_drops, self.log
        for rid in expected_drops:
            del self.reqs[rid]
        self.running = [k for k in self.running if k[0] not in expected_drops]
        self.waiting = deque(k for k in self.waiting if k[0] not in expected_drops)

        # Admission: FIFO prefix of the waiting rows that fits, no backfill; held only by the first batch's wait.
        running_cost = sum(self.cost(k) for k in self.running)
        ready = bool(self.running)
        if not ready and self.waiting:
            waiting_cost = sum(self.cost(k) for k in self.waiting)
            oldest = self.reqs[self.waiting[0][0]].arrival
            ready = waiting_cost >= self.sched.max_rows or now - oldest >= self.sched.max_wait_s
        admitted, started = [], []
        cap = self.sched.max_requests_per_step
        active = {k[0] for k in self.running}
        while ready and self.waiting and running_cost + self.cost(self.waiting[0]) <= self.sched.max_rows:
            if cap is not None and self.waiting[0][0] not in active and len(active) >= cap:
                break  # max_requests_per_step distinct requests already share the step; FIFO: the head waits
            key = self.waiting.popleft()
            active.add(key[0])
            admitted.append(key)
            running_cost += self.cost(key)
            req = self.reqs[key[0]]
            if req.admitted == 0:
                started.append((key[0], now - req.arrival))
            req.admitted += 1
        self.running += admitted
        assert list(plan.admitted) == admitted, self.log
        if self.waiting and ready:
            # The head that was not admitted really does not fit (this is the no-backfill rule's other half).
            assert running_cost + self.cost(self.waiting[0]) > self.sched.max_rows or (
                cap is not None and self.waiting[0][0] not in active and len(active) >= cap)
            assert all(k not in set(plan.rows) for k in self.waiting), self.log  # nobody behind it overtook
        assert [rid for rid, _ in plan.started] == [rid for rid, _ in started], self.log
        for (_, got), (_, want) in zip(plan.started, started):
            assert got == pytest.approx(want)

        # Every admitted, unfinished row runs; the budget holds.
        assert sorted(plan.rows) == sorted(self.running), self.log
        assert len(set(plan.rows)) == len(plan.rows)
        assert plan.cost == running_cost <= self.sched.max_rows
        if not plan.rows:
            # Nothing runs: idle (None) without waiting rows, else the rest of the oldest request's batch wait.
            if not self.waiting:
                assert plan.wait_s is None, self.log
            else:
                oldest = self.reqs[self.waiting[0][0]].arrival
                assert plan.wait_s == pytest.approx(max(0.0, oldest + self.sched.max_wait_s - now), abs=1e-9)
            if plan.wait_s is not None:
                # A real sleep lasts at least a microsecond. Sleeping exactly wait_s can leave the fake clock a
                # rounding error short of the batch-wait threshold (the hint is oldest + max_wait_s − now, the check
                # now − oldest >= max_wait_s), and wait_s then shrinks to ~1e-17, which no longer moves the clock.
                self.clock.t += max(plan.wait_s, 1e-6)
            return

        # The fake worker: each row needs the request's step count of evaluations.
        done = []
        for key in plan.rows:
            req = self.reqs[key[0]]
            req.progress[key[1]] = req.progress.get(key[1], 0) + 1
            assert req.progress[key[1]] <= req.steps
            if req.progress[key[1]] == req.steps:
                done.append(key)
        report_finished(self.sched, done)
        for key in done:
            self.running.remove(key)
            req = self.reqs[key[0]]
            req.done_rows += 1
            if req.done_rows == len(req.costs):
                del self.reqs[key[0]]
        self.clock.t += self.step_s
        self.check_counters()

    def check_counters(self) -> None:
        assert self.sched.inflight() == len(self.reqs), self.log
        assert self.sched.queue_depth() == sum(1 for r in self.reqs.values() if r.admitted == 0), self.log

    def drain(self) -> None:
        # No starvation: with no new arrivals everything still live finishes (or expires) within the sum of the
        # remaining work plus one batch wait per request; the bound is loose on purpose, a starved request never ends.
        bound = sum(r.steps * len(r.costs) for r in self.reqs.values()) + 2 * len(self.reqs) + 5
        for _ in range(bound):
            if not self.reqs:
                break
            self.step()
        assert not self.reqs and self.sched.inflight() == 0, ("did not drain", self.log)


OPS = st.one_of(
    st.tuples(st.just("submit"), st.lists(st.sampled_from([1, 2]), min_size=1, max_size=4),
              st.integers(1, 5), st.one_of(st.none(), st.floats(0.0, 1.5))),
    st.tuples(st.just("step")),
    st.tuples(st.just("step")),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.floats(0.0, 0.2)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_rows=st.integers(2, 6), max_queue=st.integers(1, 4), max_wait_s=st.sampled_from([0.0, 0.05, 0.3]),
       max_requests_per_step=st.sampled_from([None, None, 1, 2]), ops=st.lists(OPS, max_size=60))
def test_scheduler_follows_the_policy_under_random_traffic(max_rows, max_queue, max_wait_s, max_requests_per_step,
                                                           ops):
    clock = FakeClock()
    sched = Scheduler(max_rows=max_rows, max_queue=max_queue, max_wait_s=max_wait_s,
                      max_requests_per_step=max_requests_per_step, clock=clock)
    model = Model(sched, clock, step_s=0.1)
    for op in ops:
        if op[0] == "submit":
            if any(c > max_rows for c in op[1]):
                continue
            model.submit(op[1], op[2], op[3])
        elif op[0] == "step":
            model.step()
        elif op[0] == "cancel":
            model.cancel(op[1])
        else:
            model.tick(op[1])
    model.drain()


def test_a_guided_row_at_the_head_is_not_overtaken_by_a_cheaper_row_behind_it():
    # The bug this exists for: with 1 model row free, a cost-1 row behind a cost-2 head must wait too (no backfill).
    clock = FakeClock()
    sched = Scheduler(max_rows=4, max_queue=8, max_wait_s=0.0, clock=clock)
    sched.submit("running", [1, 1, 1])
    assert sched.plan().rows == [("running", 0), ("running", 1), ("running", 2)]  # cost 3 of 4
    sched.submit("guided", [2])
    sched.submit("plain", [1])
    for _ in range(3):  # while "running" runs, neither the head nor the row behind it may start
        plan = sched.plan()
        assert plan.admitted == [] and plan.cost == 3, plan
    report_finished(sched, [("running", 0), ("running", 1), ("running", 2)])
    plan = sched.plan()
    assert plan.admitted == [("guided", 0), ("plain", 0)] and plan.cost == 3
    assert [rid for rid, _ in plan.started] == ["guided", "plain"]


def test_queue_full_exactly_at_max_queue():
    clock = FakeClock()
    sched = Scheduler(max_rows=2, max_queue=3, max_wait_s=10.0, clock=clock)
    for i in range(3):
        sched.submit(f"q{i}", [1])
    with pytest.raises(QueueFull):
        sched.submit("over", [1])
    assert sched.queue_depth() == 3
    sched.plan()  # 3 waiting rows fill max_rows = 2, so the batch starts now: q0 and q1 run, q2 waits
    assert sched.queue_depth() == 1
    sched.submit("a", [1])
    sched.submit("b", [1])
    with pytest.raises(QueueFull):
        sched.submit("c", [1])


@pytest.mark.parametrize("step_s,low,high", [(1.0, 20, 30), (0.01, 1, 1)])
def test_retry_after_follows_the_measured_step_time(step_s, low, high):
    # Retry-After estimates when one waiting request's worth of rows will have run: about 25 steps (the default step
    # count) of the measured step period. Slow steps must give a long hint, fast steps the minimum of 1 s.
    clock = FakeClock()
    sched = Scheduler(max_rows=2, max_queue=1, max_wait_s=0.0, clock=clock, step_time_hint_s=0.05)
    sched.submit("running", [2])
    for _ in range(30):  # the running request never finishes here; each step lasts step_s
        assert sched.plan().rows == [("running", 0)]
        clock.t += step_s
    sched.submit("queued", [2])
    with pytest.raises(QueueFull) as exc:
        sched.submit("refused", [2])
    assert low <= exc.value.retry_after_s <= high, exc.value.retry_after_s


def test_max_requests_per_step_still_admits_the_running_requests_own_rows():
    # With batching off (1 request per step) a request's later rows join as soon as they fit, while a different
    # request must wait: the cap counts requests, not rows.
    clock = FakeClock()
    sched = Scheduler(max_rows=2, max_queue=8, max_wait_s=0.0, max_requests_per_step=1, clock=clock)
    sched.submit("a", [1, 1, 1])
    sched.submit("b", [1])
    assert sched.plan().rows == [("a", 0), ("a", 1)]
    report_finished(sched, [("a", 1)])
    plan = sched.plan()
    assert plan.admitted == [("a", 2)] and sorted(plan.rows) == [("a", 0), ("a", 2)]
    report_finished(sched, [("a", 0), ("a", 2)])
    assert sched.plan().admitted == [("b", 0)]


def test_bad_cost_error_names_the_first_bad_value():
    sched = Scheduler(max_rows=2, max_queue=1, max_wait_s=0.0)
    with pytest.raises(ValueError, match=r"costs contains 3: each row costs 1 \(unguided\) or 2 \(guided\)"):
        sched.submit("x", [1, 3, 0])
    assert sched.inflight() == 0  # nothing was queued


def test_batch_wait_hint_counts_from_the_oldest_waiting_request():
    clock = FakeClock()
    sched = Scheduler(max_rows=8, max_queue=8, max_wait_s=0.3, clock=clock)
    sched.submit("old", [1])
    clock.t = 0.1
    sched.submit("new", [1])
    plan = sched.plan()
    assert plan.rows == [] and plan.wait_s == pytest.approx(0.2)  # 0.3 after "old" arrived, not after "new"
    clock.t = 0.3
    assert sched.plan().rows == [("old", 0), ("new", 0)]

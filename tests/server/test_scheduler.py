"""Scheduler unit tests: fake clock, fake worker (rows that need a fixed number of steps), no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.scheduler import DropReason, QueueFull, Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeWorker:
    """Runs plans: each row needs ``steps[request]`` evaluations; records every step's rows."""

    def __init__(self, sched: Scheduler, clock: FakeClock, step_s: float = 0.1) -> None:
        self.sched, self.clock, self.step_s = sched, clock, step_s
        self.steps: dict = {}
        self.progress: dict = {}
        self.history: list = []
        self.finished: list = []
        self.dropped: list = []
        self.finish_step: dict = {}

    def submit(self, rid, costs, steps, deadline=None):
        self.sched.submit(rid, costs, deadline)
        self.steps[rid] = steps

    def step(self) -> bool:
        plan = self.sched.plan()
        self.dropped += plan.dropped
        if not plan.rows:
            if plan.wait_s:
                self.clock.t += plan.wait_s
            return False
        assert plan.cost <= self.sched.max_rows
        self.history.append(list(plan.rows))
        self.clock.t += self.step_s
        done = []
        for key in plan.rows:
            self.progress[key] = self.progress.get(key, 0) + 1
            if self.progress[key] == self.steps[key[0]]:
                done.append(key)
        for rid in self.sched.finish(done):
            self.finished.append(rid)
            self.finish_step[rid] = len(self.history)
        return True

    def run(self, max_iters=1000):
        for _ in range(max_iters):
            if self.sched.inflight() == 0:
                return
            self.step()
        raise AssertionError("did not drain")


def make(max_rows=4, max_queue=16, max_wait_s=0.0, **kw):
    clock = FakeClock()
    sched = Scheduler(max_rows=max_rows, max_queue=max_queue, max_wait_s=max_wait_s, clock=clock, **kw)
    return sched, clock, FakeWorker(sched, clock)


def test_scheduler_imports_no_torch():
    code = "import sys, server.scheduler; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_mixed_step_counts_join_and_leave_at_step_boundaries():
    sched, clock, w = make(max_rows=4)
    w.submit("short", [1], steps=2)
    w.submit("long", [1], steps=5)
    w.step()
    w.step()  # short finishes after its 2nd step
    assert w.finished == ["short"]
    w.submit("late", [1], steps=1)  # joins the running batch at the next boundary, mid-way through "long"
    w.step()
    assert ("late", 0) in w.history[-1] and ("long", 0) in w.history[-1]
    assert ("short", 0) not in w.history[-1]
    w.run()
    assert w.finished == ["short", "late", "long"]
    assert w.progress[("long", 0)] == 5  # exactly its own step count, whatever else ran


def test_guided_rows_count_twice_against_max_rows():
    sched, clock, w = make(max_rows=4)
    w.submit("g", [2, 2, 2], steps=3)  # 3 guided images = 6 model rows > 4
    w.submit("u", [1, 1], steps=3)
    w.step()
    first = w.history[0]
    assert first == [("g", 0), ("g", 1)]  # 2 guided rows = 4 model rows; u waits (FIFO, no overtaking)
    w.run()
    for rows in w.history:
        cost = sum(2 if r[0] == "g" else 1 for r in rows)
        assert cost <= 4
    assert set(w.finished) == {"g", "u"}


def test_mixed_guidance_shares_one_step():
    sched, clock, w = make(max_rows=4)
    w.submit("guided", [2], steps=2)
    w.submit("plain", [1, 1], steps=2)
    w.step()
    assert sorted(w.history[0]) == [("guided", 0), ("plain", 0), ("plain", 1)]
    assert sched.running_cost() == 4


def test_fifo_fairness_large_request_not_starved_by_stream_of_small_ones():
    sched, clock, w = make(max_rows=4, max_queue=1000)
    w.submit("s0", [1], steps=3)
    w.submit("big", [1, 1, 1, 1], steps=3)  # needs the whole budget
    # A steady stream of 1-row requests arrives every step; each would fit in a gap left by others.
    for i in range(1, 40):
        w.submit(f"s{i}", [1], steps=3)
        w.step()
        if "big" in w.finished:
            break
    assert "big" in w.finished, "the 4-row request starved"
    # big started no later than once s0 freed its row: it finished within s0's 3 steps + its own 3 (+1 slack).
    assert w.finish_step["big"] <= 3 + 3 + 1
    # Nobody who arrived after big started before it.
    first_step_of = {}
    for n, rows in enumerate(w.history):
        for rid, _ in rows:
            first_step_of.setdefault(rid, n)
    later = [rid for rid in first_step_of if rid.startswith("s") and int(rid[1:]) >= 1]
    assert all(first_step_of[r] >= first_step_of["big"] for r in later)


def test_cancellation_takes_effect_at_next_step():
    sched, clock, w = make(max_rows=4)
    w.submit("a", [1, 1], steps=10)
    w.submit("b", [1], steps=10)
    w.step()
    assert sched.cancel("a") is True
    w.step()
    assert ("a", DropReason.CANCELLED) in w.dropped
    assert all(r[0] != "a" for r in w.history[-1])
    assert sched.running_cost() == 1
    assert sched.cancel("a") is False  # already gone
    w.run()
    assert w.finished == ["b"]


def test_cancel_while_queued_frees_the_queue_slot():
    sched, clock, w = make(max_rows=2, max_queue=1)
    w.submit("run", [2], steps=5)
    w.step()
    w.submit("queued", [2], steps=5)
    with pytest.raises(QueueFull):
        sched.submit("over", [1])
    sched.cancel("queued")
    w.step()
    assert sched.queue_depth() == 0
    sched.submit("next", [1])  # the slot is free again


def test_deadline_drops_queued_and_running_requests():
    sched, clock, w = make(max_rows=2)
    w.submit("running", [2], steps=100, deadline=0.35)
    w.submit("queued", [2], steps=1, deadline=0.25)
    for _ in range(5):
        w.step()
    reasons = dict(w.dropped)
    assert reasons == {"running": DropReason.DEADLINE, "queued": DropReason.DEADLINE}
    assert sched.inflight() == 0 and sched.running_cost() == 0


def test_queue_overflow_rejects_at_once_with_retry_after():
    sched, clock, w = make(max_rows=2, max_queue=2)
    w.submit("r", [2], steps=50)
    w.step()  # r runs; it no longer counts as waiting
    w.submit("q1", [2], steps=50)
    w.submit("q2", [2], steps=50)
    with pytest.raises(QueueFull) as exc:
        sched.submit("q3", [2])
    assert exc.value.retry_after_s >= 1
    assert "max_queue=2" in str(exc.value)
    assert sched.queue_depth() == 2


def test_batch_wait_holds_a_partial_first_batch_then_starts():
    sched, clock, w = make(max_rows=4, max_wait_s=0.05)
    sched.submit("a", [1])
    w.steps["a"] = 1
    plan = sched.plan()
    assert plan.rows == [] and plan.wait_s == pytest.approx(0.05)
    clock.t += 0.02
    sched.submit("b", [1])
    w.steps["b"] = 1
    assert sched.plan().rows == []
    clock.t += 0.03
    plan = sched.plan()
    assert plan.rows == [("a", 0), ("b", 0)]
    assert [rid for rid, _ in plan.started] == ["a", "b"]
    assert plan.started[0][1] == pytest.approx(0.05)  # queue wait of a


def test_full_batch_starts_without_waiting():
    sched, clock, w = make(max_rows=2, max_wait_s=10.0)
    sched.submit("a", [2])
    assert sched.plan().rows == [("a", 0)]


def test_batching_off_runs_one_request_per_step():
    sched, clock, w = make(max_rows=8, max_requests_per_step=1)
    for rid in "abc":
        w.submit(rid, [1, 1], steps=2)
    w.run()
    assert all(len({r[0] for r in rows}) == 1 for rows in w.history)
    assert w.finished == ["a", "b", "c"]


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match="max_rows=1"):
        Scheduler(max_rows=1, max_queue=1, max_wait_s=0)
    sched = Scheduler(max_rows=2, max_queue=1, max_wait_s=0)
    with pytest.raises(ValueError, match="costs contains 3"):
        sched.submit("x", [3])
    sched.submit("x", [1])
    with pytest.raises(ValueError, match="already queued"):
        sched.submit("x", [1])


def test_exact_cost_per_step_from_each_rows_schedule():
    # cfg_star (zero-init) runs its first evaluation without the twin, late guidance adds it half-way: the plan's
    # cost is the forward rows each step really runs, while admission reserves each row's peak.
    sched, clock, w = make(max_rows=4)
    w.submit("star", [[1, 2, 2]], steps=3)
    w.submit("late", [[1, 1, 2, 2]], steps=4)
    costs = []
    while sched.inflight():
        plan = sched.plan()
        costs.append(plan.cost)
        w.history.append(plan.rows)
        done = [k for k in plan.rows if len([h for h in w.history if k in h]) == w.steps[k[0]]]
        sched.update(finished=done)
    assert costs == [2, 3, 4, 2]


def test_peak_cost_reserved_so_later_steps_never_exceed_max_rows():
    sched, clock, w = make(max_rows=3)
    w.submit("late", [[1, 1, 2, 2]], steps=4)
    w.submit("plain", [2], steps=4)  # fits the first step's actual cost (1 + 2) but not late's peak (2 + 2)
    plan = sched.plan()
    assert plan.rows == [("late", 0)] and plan.cost == 1


def test_slots_are_unique_and_reused_after_a_row_leaves():
    sched, clock, w = make(max_rows=4)
    w.submit("a", [1, 1], steps=1)
    w.submit("b", [1, 1], steps=3)
    plan = sched.plan()
    assert sorted(plan.slots.values()) == [0, 1, 2, 3]
    b_slots = {k: plan.slots[k] for k in plan.rows if k[0] == "b"}
    sched.update(finished=[("a", 0), ("a", 1)])
    w.submit("c", [1, 1], steps=1)
    plan = sched.plan()
    assert {k: plan.slots[k] for k in plan.rows if k[0] == "b"} == b_slots  # a running row keeps its slot
    assert sorted(plan.slots.values()) == [0, 1, 2, 3] and len(set(plan.slots.values())) == 4


def test_lifecycle_states_and_failed_requests_leave_at_once():
    from server.scheduler import RequestState

    sched, clock, w = make(max_rows=2)
    sched.submit("a", [1])
    sched.submit("b", [1])
    sched.submit("c", [2])
    assert sched.state("a") is RequestState.WAITING
    sched.plan()
    assert sched.state("a") is RequestState.RUNNING and sched.state("c") is RequestState.WAITING
    assert sched.update(finished=[("a", 0)], failed=["b"]) == ["a"]
    assert sched.state("a") is RequestState.FINISHED and sched.state("b") is RequestState.FAILED
    sched.cancel("c")
    assert sched.plan().dropped == [("c", DropReason.CANCELLED)]
    assert sched.state("c") is RequestState.CANCELLED and sched.state("never") is None
    assert sched.inflight() == 0

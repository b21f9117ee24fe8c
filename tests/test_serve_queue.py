"""The job queue of `ldm serve`: bounded, in order, positions, cancellation, time limits."""

from __future__ import annotations

import threading
import time

import pytest

from latent_diffusion.serve.jobs import CANCELLED, DONE, FAILED, JobCancelled, JobQueue, QueueClosed, QueueFull

WAIT = 5.0  # seconds any single step of these tests may take before it counts as hung


def gated(started: list[str], name: str, gate: threading.Event):
    """Work that records its start, then waits for ``gate`` while reporting progress."""
    def work(job):
        started.append(name)
        step = 0
        while not gate.wait(0.005):
            step += 1
            job.progress(step, None)
        return name
    return work


def until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture()
def queue():
    q = JobQueue(concurrency=1, max_waiting=3, max_run_seconds=None)
    yield q
    q.close()


def test_jobs_run_one_at_a_time_in_order_and_report_their_place(queue: JobQueue) -> None:
    started: list[str] = []
    gates = {name: threading.Event() for name in "abc"}
    jobs = {name: queue.submit(gated(started, name, gates[name]), kind=name) for name in "abc"}
    until(lambda: started == ["a"])
    assert [jobs[n].position for n in "abc"] == [None, 1, 2]
    assert queue.stats()["running"] == 1 and queue.stats()["waiting"] == 2
    gates["a"].set()
    until(lambda: started == ["a", "b"])
    assert jobs["a"].wait(WAIT) and jobs["a"].state == DONE and jobs["a"].result == "a"
    assert jobs["c"].position == 1
    gates["b"].set(), gates["c"].set()
    assert jobs["c"].wait(WAIT) and started == ["a", "b", "c"]
    assert queue.stats()["completed"] == 3


def test_a_full_queue_refuses_and_recovers(queue: JobQueue) -> None:
    gate = threading.Event()
    started: list[str] = []
    jobs = [queue.submit(gated(started, str(i), gate)) for i in range(4)]  # 1 running + 3 waiting
    until(lambda: started == ["0"])
    with pytest.raises(QueueFull, match="at most 3 may wait"):
        queue.submit(lambda job: None)
    assert queue.stats()["rejected"] == 1
    gate.set()
    assert all(job.wait(WAIT) for job in jobs)
    assert queue.submit(lambda job: "again").wait(WAIT)


def test_concurrency_runs_that_many_at_once() -> None:
    queue = JobQueue(concurrency=2, max_waiting=0, max_run_seconds=None)
    try:
        gate, started = threading.Event(), []
        a, b = queue.submit(gated(started, "a", gate)), queue.submit(gated(started, "b", gate))
        until(lambda: sorted(started) == ["a", "b"])  # both run, neither waits
        assert a.position is None and b.position is None
        with pytest.raises(QueueFull):  # max_waiting=0: nothing may wait behind busy workers
            queue.submit(lambda job: None)
        gate.set()
        assert a.wait(WAIT) and b.wait(WAIT)
    finally:
        queue.close()


def test_cancelling_a_waiting_job_frees_its_place_and_it_never_runs(queue: JobQueue) -> None:
    gate, started = threading.Event(), []
    first = queue.submit(gated(started, "first", gate))
    doomed = queue.submit(gated(started, "doomed", gate))
    last = queue.submit(gated(started, "last", gate))
    until(lambda: started == ["first"])
    assert last.position == 2
    doomed.cancel("the client disconnected")
    assert doomed.state == CANCELLED and doomed.snapshot().error == "the client disconnected"
    assert last.position == 1 and queue.stats()["waiting"] == 1
    gate.set()
    assert last.wait(WAIT) and first.wait(WAIT)
    assert started == ["first", "last"]


def test_cancelling_a_running_job_stops_it_at_its_next_step(queue: JobQueue) -> None:
    gate, started = threading.Event(), []  # the gate never opens: only cancellation ends the job
    running = queue.submit(gated(started, "running", gate))
    after = queue.submit(lambda job: "after")
    until(lambda: running.step > 2)
    running.cancel()
    assert running.wait(WAIT) and running.state == CANCELLED
    assert after.wait(WAIT) and after.result == "after"  # the worker is free again
    stats = queue.stats()
    assert stats["cancelled"] == 1 and stats["completed"] == 1 and stats["running"] == 0


def test_a_job_over_its_time_limit_is_stopped() -> None:
    queue = JobQueue(concurrency=1, max_waiting=1, max_run_seconds=0.1)
    try:
        job = queue.submit(gated([], "forever", threading.Event()))
        assert job.wait(WAIT) and job.state == CANCELLED
        assert "longer than 0.1 s" in job.snapshot().error
    finally:
        queue.close()


def test_a_failing_job_keeps_its_error_and_the_worker_lives_on(queue: JobQueue) -> None:
    def boom(job):
        raise ValueError("bad mask")

    failed = queue.submit(boom)
    ok = queue.submit(lambda job: 42)
    assert failed.wait(WAIT) and failed.state == FAILED and isinstance(failed.error, ValueError)
    assert failed.snapshot().error == "bad mask"
    assert ok.wait(WAIT) and ok.result == 42


def test_listeners_hear_each_step_and_the_end(queue: JobQueue) -> None:
    def steps(job):
        for i in range(1, 4):
            job.progress(i, 3)
        return "ok"

    gate = threading.Event()
    blocker = queue.submit(gated([], "blocker", gate))
    job = queue.submit(steps)
    seen: list[tuple] = []
    job.subscribe(lambda: seen.append((job.state, job.position, job.step)))
    gate.set()
    assert blocker.wait(WAIT) and job.wait(WAIT)
    assert ("running", None, 3) in seen and seen[-1] == ("done", None, 3)
    assert job.snapshot().total == 3


def test_close_cancels_everything_and_refuses_new_jobs() -> None:
    queue = JobQueue(concurrency=1, max_waiting=2, max_run_seconds=None)
    gate = threading.Event()
    running = queue.submit(gated([], "running", gate))
    waiting = queue.submit(lambda job: None)
    until(lambda: running.state == "running")
    queue.close()
    assert waiting.state == CANCELLED and running.wait(WAIT) and running.state == CANCELLED
    with pytest.raises(QueueClosed):
        queue.submit(lambda job: None)


def test_progress_raises_once_cancelled() -> None:
    queue = JobQueue(concurrency=1, max_waiting=0, max_run_seconds=None)
    try:
        job = queue.submit(lambda job: None)
        job.wait(WAIT)
        job.cancel_reason = "stop"
        with pytest.raises(JobCancelled, match="stop"):
            job.progress(1)
    finally:
        queue.close()


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"max_waiting": -1}, {"max_run_seconds": 0}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        JobQueue(**kwargs)

"""A bounded job queue: generation runs a few at a time, the rest wait in line, and no job
outlives the client that asked for it.

Generation is seconds of CPU per request, so a server that started every request at once would
thrash and run out of memory under load. Instead :class:`JobQueue` runs ``concurrency`` jobs on
worker threads (PyTorch releases the GIL, and a thread per job keeps the event loop free to serve
the page, the queue status and progress), keeps at most ``max_waiting`` jobs waiting, and refuses
the next one with :class:`QueueFull` (the HTTP layer answers 429). Every job reports its place in
line and its denoising step; a job is cancelled at its next step when the client went away or it
ran past ``max_run_seconds``, so abandoned work never keeps the CPU.

The queue knows nothing about HTTP or diffusion: a job is any ``work(job)`` callable that calls
:meth:`Job.progress` now and then.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WAITING, RUNNING, DONE, FAILED, CANCELLED = "waiting", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})


class QueueFull(RuntimeError):
    """The queue already holds its maximum of waiting jobs; try again later."""


class QueueClosed(RuntimeError):
    """The queue is shutting down and takes no new jobs."""


class JobCancelled(Exception):
    """Raised inside a job's work (by :meth:`Job.progress`) to stop it; the message says why."""


@dataclass(frozen=True)
class JobSnapshot:
    """What a client sees of a job at one moment; ``position`` is 1 for the next job to start."""

    id: str
    kind: str
    state: str
    position: int | None
    step: int
    total: int
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-ready dict."""
        return {"id": self.id, "kind": self.kind, "state": self.state, "position": self.position,
                "step": self.step, "total": self.total, "error": self.error}


class Job:
    """One unit of work in a :class:`JobQueue`; created by :meth:`JobQueue.submit`."""

    def __init__(self, queue: JobQueue, job_id: str, kind: str, work: Callable[[Job], Any], total: int) -> None:
        self._queue = queue
        self.id = job_id
        self.kind = kind
        self._work = work
        self.state = WAITING
        self.step = 0
        self.total = total
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancel_reason: str | None = None
        self.deadline: float | None = None
        self._finished = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # ---- for the code that runs the work ----------------------------------------------------
    def check(self) -> None:
        """Raise :class:`JobCancelled` when the job was cancelled or ran out of time: how a running job
        is stopped between its units of work (denoising steps, decoded tiles, back-projection rounds)."""
        if self.cancel_reason is not None:
            raise JobCancelled(self.cancel_reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.cancel_reason = f"the job ran longer than {self._queue.max_run_seconds:g} s and was stopped"
            raise JobCancelled(self.cancel_reason)

    def progress(self, step: int, total: int | None = None) -> None:
        """Record that ``step`` of ``total`` steps are done, after :meth:`check`."""
        self.check()
        self.step = step
        if total is not None:
            self.total = total
        self._notify()

    # ---- for clients --------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Whether the job is done, failed or cancelled."""
        return self.state in FINISHED

    @property
    def position(self) -> int | None:
        """1-based place in the waiting line (1 = next to start), None once it has started."""
        return self._queue.position(self)

    def snapshot(self) -> JobSnapshot:
        """A consistent copy of the job's state for reporting."""
        error = None
        if self.state == FAILED:
            error = str(self.error)
        elif self.state == CANCELLED:
            error = self.cancel_reason
        return JobSnapshot(self.id, self.kind, self.state, self.position, self.step, self.total, error)

    def cancel(self, reason: str = "cancelled by the client") -> None:
        """Stop the job: a waiting job leaves the line at once, a running one at its next step."""
        if self.finished:
            return
        self.cancel_reason = reason
        self._queue._cancel_waiting(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds passed (False)."""
        return self._finished.wait(timeout)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from any thread) whenever the state, position or step changes."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # ---- for the queue ------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def _finish(self, state: str) -> None:
        self.state = state
        self._work = None  # drop the closure (and the input images it holds) as soon as possible
        self._finished.set()
        self._notify()

    def _execute(self) -> str:
        """Run the work; return the state it ended in (the queue then records and announces it)."""
        try:
            if self.cancel_reason is not None:
                raise JobCancelled(self.cancel_reason)
            self.result = self._work(self)
        except JobCancelled as err:
            self.cancel_reason = self.cancel_reason or str(err)
            return CANCELLED
        except Exception as err:  # noqa: BLE001 -- any failure belongs to this job, not to the worker
            self.error = err
            return FAILED
        return DONE


class JobQueue:
    """Runs submitted jobs ``concurrency`` at a time on worker threads, holding at most
    ``max_waiting`` waiting jobs; see the module docstring."""

    def __init__(self, concurrency: int = 1, max_waiting: int = 16, max_run_seconds: float | None = 600.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency!r} must be >= 1")
        if max_waiting < 0:
            raise ValueError(f"max_waiting={max_waiting!r} must be >= 0")
        if max_run_seconds is not None and max_run_seconds <= 0:
            raise ValueError(f"max_run_seconds={max_run_seconds!r} must be > 0 (or None for no limit)")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.max_run_seconds = max_run_seconds
        self._waiting: deque[Job] = deque()
        self._running: set[Job] = set()
        self._counts = {DONE: 0, FAILED: 0, CANCELLED: 0, "rejected": 0}
        self._ids = itertools.count(1)
        self._condition = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._worker, name=f"ldm-serve-worker-{i}", daemon=True)
                         for i in range(concurrency)]
        for worker in self._workers:
            worker.start()

    def submit(self, work: Callable[[Job], Any], kind: str = "job", total: int = 0) -> Job:
        """Queue ``work(job)``; raise :class:`QueueFull` when ``max_waiting`` jobs already wait, and
        :class:`QueueClosed` after :meth:`close`. ``total`` is the step count shown before it starts."""
        with self._condition:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            # A job that a free worker will take at once never waits, so it does not count.
            free_workers = self.concurrency - len(self._running)
            if len(self._waiting) - free_workers >= self.max_waiting:
                self._counts["rejected"] += 1
                raise QueueFull(f"{len(self._waiting) + len(self._running)} jobs are already queued or running "
                                f"(at most {self.max_waiting} may wait); try again in a little while")
            job = Job(self, f"{next(self._ids)}", kind, work, total)
            self._waiting.append(job)
            self._condition.notify()
        self._notify_waiting()
        return job

    def position(self, job: Job) -> int | None:
        """1-based place of ``job`` among the waiting jobs, None when it is not waiting."""
        with self._condition:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return None

    def stats(self) -> dict[str, int]:
        """How many jobs run and wait now, the limits, and how many ended each way so far."""
        with self._condition:
            return {"running": len(self._running), "waiting": len(self._waiting), "concurrency": self.concurrency,
                    "max_waiting": self.max_waiting, "completed": self._counts[DONE],
                    "failed": self._counts[FAILED], "cancelled": self._counts[CANCELLED],
                    "rejected": self._counts["rejected"]}

    def close(self, timeout: float = 5.0) -> None:
        """Take no new jobs, cancel waiting and running ones, and wait up to ``timeout`` s for workers."""
        with self._condition:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            running = list(self._running)
            self._condition.notify_all()
        for job in waiting:
            job.cancel_reason = "the server is shutting down"
            self._finished(job, CANCELLED)
        for job in running:
            job.cancel("the server is shutting down")
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # ---- internals ----------------------------------------------------------------------------
    def _cancel_waiting(self, job: Job) -> None:
        with self._condition:
            was_waiting = job in self._waiting
            if was_waiting:
                self._waiting.remove(job)
        if was_waiting:
            self._finished(job, CANCELLED)
            self._notify_waiting()
        else:
            job._notify()  # running: it stops at its next step; tell followers it is stopping

    def _finished(self, job: Job, state: str) -> None:
        with self._condition:
            self._counts[state] += 1
        job._finish(state)

    def _notify_waiting(self) -> None:
        """Positions moved: tell every waiting job's listeners."""
        with self._condition:
            waiting = list(self._waiting)
        for job in waiting:
            job._notify()

    def _worker(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state = RUNNING
                if self.max_run_seconds is not None:
                    job.deadline = time.monotonic() + self.max_run_seconds
                self._running.add(job)
            self._notify_waiting()
            job._notify()
            state = job._execute()
            # Book-keeping before announcing the end, so whoever wakes up sees consistent stats.
            with self._condition:
                self._running.discard(job)
                self._counts[state] += 1
            job._finish(state)


__all__ = ["CANCELLED", "DONE", "FAILED", "FINISHED", "Job", "JobCancelled", "JobQueue", "JobSnapshot", "QueueClosed",
           "QueueFull", "RUNNING", "WAITING"]

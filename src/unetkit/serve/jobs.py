"""Predictions run on a fixed number of worker threads, one at a time each, behind a bounded queue.

Both `POST /predict` (waits for its result) and `POST /jobs` (returns an id at once) submit here, so
the server never runs more than `workers` predictions or holds more than `workers + max_queue`
uploads, whatever the number of clients: memory stays flat under load.
"""
from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from unetkit.serve.files import RequestProblem


@dataclass
class Job:
    """One prediction: `status` queued -> running -> done | failed, `progress` in [0, 1]."""

    id: str
    model: str
    image: str
    status: str = "queued"
    progress: float = 0.0
    created: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: tuple[int, str] | None = None
    future: Future | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "model": self.model, "image": self.image, "status": self.status,
                               "progress": round(self.progress, 4)}
        if self.error is not None:
            out["error"] = {"status": self.error[0], "message": self.error[1]}
        return out


class JobQueue:
    """`workers` threads; at most `max_queue` submissions wait; the last `keep` finished jobs are kept."""

    def __init__(self, workers: int = 1, max_queue: int = 16, keep: int = 32,
                 classify: Callable[[BaseException], tuple[int, str]] | None = None) -> None:
        if workers < 1 or max_queue < 0 or keep < 1:
            raise ValueError("workers >= 1, max_queue >= 0 and keep >= 1 are required")
        self.workers, self.max_queue, self.keep = workers, max_queue, keep
        self.classify = classify or (lambda err: (500, "internal error"))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unetkit-predict")
        self._lock = threading.Lock()
        self._pending = 0  # queued + running
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._counter = itertools.count(1)

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.status == "running")
            return {"workers": self.workers, "pending": self._pending, "max_queue": self.max_queue,
                    "jobs_kept": len(self._jobs), "running_jobs": running}

    def submit(self, work: Callable[[Job], Any], model: str, image: str, keep: bool,
               cleanup: Callable[[], None] | None = None) -> Job:
        """Queue `work(job)`; 503 when `workers + max_queue` predictions are already waiting or running.

        `keep`: remember the job for `get` (async jobs); `cleanup` runs after the work, whatever happens.
        """
        with self._lock:
            if self._pending >= self.workers + self.max_queue:
                raise RequestProblem(503, f"the server is busy ({self._pending} predictions waiting or running); "
                                          f"try again shortly")
            self._pending += 1
            job = Job(id=f"{next(self._counter)}-{secrets.token_hex(6)}", model=model, image=image)
            if keep:
                self._jobs[job.id] = job
                self._evict()
        job.future = self._pool.submit(self._run, job, work, cleanup)
        return job

    def _run(self, job: Job, work: Callable[[Job], Any], cleanup: Callable[[], None] | None) -> Any:
        job.status = "running"
        try:
            job.result = work(job)
            job.progress, job.status = 1.0, "done"
            return job.result
        except BaseException as err:
            job.error, job.status = self.classify(err), "failed"
            raise
        finally:
            job.finished = time.time()
            if cleanup is not None:
                cleanup()
            with self._lock:
                self._pending -= 1
                self._evict()

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
        for key in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[key]

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestProblem(404, f"no job '{job_id}' (finished jobs are kept until {self.keep} newer ones finish)")
        return job

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Worker pool that runs conversion jobs on threads, driven from asyncio.

Why threads: the heavy parts (torch kernels, pyworld's C analysis, faiss) release the GIL, and threads share the
model weights the registry loaded once per device, so N workers cost no extra model memory.

* CUDA: every worker owns one ``torch.cuda.Stream``; a job runs inside ``torch.cuda.stream(s)`` and the worker
  synchronizes only that stream before handing the result back, so conversions (and a Triton TTS on the same GPU)
  overlap instead of serializing on the default stream.
* CPU: ``torch.set_num_threads`` sets the size of the OpenMP team that *each* parallel region gets, and every worker
  thread that enters a parallel region gets its own team. So the pool sets it once, process-wide, to
  ``cores // workers``: with all workers busy the process uses about ``cores`` compute threads, not
  ``workers * cores`` (calling it per worker thread would only rewrite the same global value).
* Jobs with the same ``key`` (one conversion stream) run one at a time in submission order; different keys run in
  parallel. Only the head job of each key sits in the ready queues, so a long stream cannot block a worker waiting
  on its own earlier block.
* Fair share (issue 27): ready jobs wait in one FIFO per ``share`` (the caller where the servicer knows one, else
  the model), and free workers take from the shares round-robin, so a model (or caller) with ten times the streams
  does not get ten times the workers while another waits.
* The queue is bounded: when ``capacity`` jobs are already waiting, ``submit`` raises ``PoolFull`` at once
  (RESOURCE_EXHAUSTED with a retry hint derived from the recent job time). A job with a ``deadline_s`` is refused at
  once (PoolFull) when the expected wait is already longer, and dropped (PoolFull) if it reaches a worker after its
  deadline: converting it then would only make later blocks late too.
* Cancellation: cancelling the awaiting coroutine (client gone, deadline passed) drops a queued job and sets the
  job's ``CancelToken``; a running job stops at its next check (the engines take the token as ``should_stop`` and
  check it between their steps and inside them, so within tens of ms), the worker is then free again. A job whose
  token is already set is dropped when it reaches the head of the queue. ``CancelToken``/``JobCancelled`` live in
  ``cancel.py`` so the engines can use them without importing the pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.common.errors import ResourceExhausted, Unavailable
from services.rvc_service import metrics
from services.rvc_service.cancel import CancelToken, JobCancelled

# CancelToken and JobCancelled are re-exported: callers of the pool take them from here.
__all__ = [
    "CancelToken",
    "JobCancelled",
    "JobResult",
    "PoolClosed",
    "PoolFull",
    "PoolStats",
    "WorkerPool",
    "default_workers",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PoolFull(ResourceExhausted):
    """The bounded queue is full; the client should retry after ``retry_after_s``."""


class PoolClosed(Unavailable):
    """The pool is shutting down and takes no more work."""


@dataclass(frozen=True)
class JobResult(Generic[T]):
    value: T
    run_seconds: float  # time on a worker, queueing excluded
    wait_seconds: float  # time in the queue
    worker: int = -1  # index of the worker thread that ran it (traces show which one)


@dataclass(frozen=True)
class PoolStats:
    workers: int
    busy: int
    queue_depth: int
    queue_capacity: int
    cuda_streams: int


@dataclass
class _Job:
    fn: Callable[[CancelToken], Any]
    key: str | None
    model: str
    token: CancelToken
    audio_seconds: float | None
    future: concurrent.futures.Future[Any]
    enqueued_at: float
    share: str = ""
    deadline_at: float | None = None  # perf_counter time after which running it is pointless


def default_workers(device: str) -> int:
    """Two per GPU overlap one job's host work (F0, faiss) with another's kernels; on CPU one per core."""
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(2, min(4, cores // 2))
    return max(1, min(8, cores))


class WorkerPool:
    def __init__(
        self,
        workers: int,
        queue_capacity: int,
        *,
        device: str = "cpu",
        threads_per_worker: int | None = None,
        name: str = "rvc-worker",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if queue_capacity < 1:
            raise ValueError(f"queue_capacity must be at least 1, got {queue_capacity}")
        self.workers = workers
        self.capacity = queue_capacity
        self.device = device
        self._cond = threading.Condition()
        # Head job of each idle key, one FIFO per share; shares are served round-robin (the first one is next).
        self._ready: collections.OrderedDict[str, collections.deque[_Job]] = collections.OrderedDict()
        self._blocked: dict[str, collections.deque[_Job]] = {}  # later jobs of keys that have one queued/running
        self._active_keys: set[str] = set()  # keys with a job in _ready or running
        self._queued = 0
        self._busy = 0
        self._queued_by_model: collections.Counter[str] = collections.Counter()
        self._busy_by_model: collections.Counter[str] = collections.Counter()
        self._running_tokens: set[CancelToken] = set()
        self._closed = False
        self._job_ema_s = 0.5  # recent job time, for the retry hint
        self._cuda = device.startswith("cuda")
        if not self._cuda:
            cores = os.cpu_count() or 1
            self.threads_per_worker = threads_per_worker or max(1, cores // workers)
            with contextlib.suppress(ImportError):
                import torch

                torch.set_num_threads(self.threads_per_worker)
        else:
            self.threads_per_worker = threads_per_worker or 1
        self._threads = [
            threading.Thread(target=self._worker_main, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = threading.Barrier(workers + 1)
        self._start_errors: list[BaseException] = []
        for thread in self._threads:
            thread.start()
        self._started.wait()
        if self._start_errors:
            self._shutdown_threads()
            raise RuntimeError(f"worker start failed: {self._start_errors[0]}") from self._start_errors[0]
        metrics.WORKERS.set(workers)
        metrics.QUEUE_CAPACITY.set(queue_capacity)

    # ---------------------------------------------------------------------------------------------------- submit

    def submit(
        self,
        fn: Callable[[CancelToken], T],
        *,
        model: str,
        key: str | None = None,
        token: CancelToken | None = None,
        audio_seconds: float | None = None,
        share: str | None = None,
        deadline_s: float | None = None,
    ) -> concurrent.futures.Future[JobResult[T]]:
        """Queue ``fn(token)``; raises PoolFull at once when the queue is full or the expected wait is longer than
        ``deadline_s``, PoolClosed after close(). ``share`` (default: the model) is whose turn it takes."""
        now = time.perf_counter()
        job = _Job(
            fn,
            key,
            model,
            token if token is not None else CancelToken(),
            audio_seconds,
            concurrent.futures.Future(),
            now,
            share if share is not None else model,
            None if deadline_s is None else now + deadline_s,
        )
        with self._cond:
            if self._closed:
                raise PoolClosed("voice conversion is shutting down", retry_after_s=1.0)
            idle = self.workers - self._busy
            if self._queued >= self.capacity + idle:
                metrics.JOBS.labels(model, "rejected").inc()
                raise PoolFull(
                    f"conversion queue is full ({self.capacity} waiting jobs); retry later",
                    retry_after_s=self._retry_hint_locked(),
                )
            if deadline_s is not None and (expected := self._expected_wait_locked(job.share)) > deadline_s:
                metrics.JOBS.labels(model, "rejected").inc()
                raise PoolFull(
                    f"conversion queue: the expected wait ({expected:.2f} s) is longer than the deadline "
                    f"({deadline_s:.2f} s)",
                    retry_after_s=self._retry_hint_locked(),
                )
            self._queued += 1
            self._queued_by_model[model] += 1
            metrics.QUEUE_DEPTH.labels(model).set(self._queued_by_model[model])
            if key is not None and key in self._active_keys:
                self._blocked.setdefault(key, collections.deque()).append(job)
            else:
                if key is not None:
                    self._active_keys.add(key)
                self._push_ready_locked(job)
                self._cond.notify()
        # A weak reference: the future keeps its callbacks after it is done, and a strong one would make a
        # job -> future -> callback -> job cycle that only a full garbage collection frees.
        job_ref = weakref.ref(job)
        job.future.add_done_callback(lambda f: self._on_future_done(job_ref(), f))
        return job.future

    async def run(
        self,
        fn: Callable[[CancelToken], T],
        *,
        model: str,
        key: str | None = None,
        token: CancelToken | None = None,
        audio_seconds: float | None = None,
        share: str | None = None,
        deadline_s: float | None = None,
    ) -> JobResult[T]:
        """Submit and await. If the caller is cancelled the job is dropped (queued) or told to stop (running)."""
        token = token if token is not None else CancelToken()
        future = self.submit(
            fn, model=model, key=key, token=token, audio_seconds=audio_seconds, share=share, deadline_s=deadline_s
        )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            token.cancel("caller cancelled")
            future.cancel()  # no-op once running; the token stops it at the next segment
            raise

    def _on_future_done(self, job: _Job | None, future: concurrent.futures.Future[Any]) -> None:
        """A queued job cancelled by its caller leaves the queue now, so depth and capacity reflect reality."""
        if job is None or not future.cancelled():  # None: the job is gone, so it is in no queue either
            return
        with self._cond:
            removed = self._remove_ready_locked(job)
            if removed:
                self._release_key_locked(job.key)
            if not removed and job.key is not None and job.key in self._blocked:
                with contextlib.suppress(ValueError):
                    self._blocked[job.key].remove(job)
                    removed = True
                    if not self._blocked[job.key]:
                        del self._blocked[job.key]
            if removed:
                self._dequeued_locked(job)
                metrics.JOBS.labels(job.model, "cancelled").inc()

    # ---------------------------------------------------------------------------------------------------- workers

    def _push_ready_locked(self, job: _Job) -> None:
        self._ready.setdefault(job.share, collections.deque()).append(job)

    def _pop_ready_locked(self) -> _Job:
        """The head job of the share whose turn it is; that share goes to the back of the round."""
        share, queue = next(iter(self._ready.items()))
        job = queue.popleft()
        if queue:
            self._ready.move_to_end(share)
        else:
            del self._ready[share]
        return job

    def _remove_ready_locked(self, job: _Job) -> bool:
        queue = self._ready.get(job.share)
        if queue is None or job not in queue:
            return False
        queue.remove(job)
        if not queue:
            del self._ready[job.share]
        return True

    def _expected_wait_locked(self, share: str) -> float:
        """Wait of a new job of `share`: the ready jobs served before it in the round-robin, a wave of `workers`
        jobs at a time, plus what is left of a running job when no worker is idle."""
        mine = len(self._ready.get(share, ()))
        ahead = sum(min(len(q), mine + 1) for s, q in self._ready.items() if s != share) + mine
        if self._busy < self.workers and ahead < self.workers - self._busy:
            return 0.0
        return (ahead // self.workers + 0.5) * self._job_ema_s

    def _dequeued_locked(self, job: _Job) -> None:
        self._queued -= 1
        self._queued_by_model[job.model] -= 1
        metrics.QUEUE_DEPTH.labels(job.model).set(self._queued_by_model[job.model])

    def _release_key_locked(self, key: str | None) -> None:
        """The key's current job is done (or dropped): promote its next job, or mark the key idle."""
        if key is None:
            return
        pending = self._blocked.get(key)
        if pending:
            self._push_ready_locked(pending.popleft())
            if not pending:
                del self._blocked[key]
            self._cond.notify()
        else:
            self._active_keys.discard(key)

    def _retry_hint_locked(self) -> float:
        waves = self._queued / self.workers + 1
        return float(min(30.0, max(0.1, waves * self._job_ema_s)))

    def _cuda_stream(self) -> Any:
        import torch

        device = torch.device(self.device)
        if device.index is not None:
            torch.cuda.set_device(device)
        return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]  # torch: Stream.__new__ is unannotated

    def _worker_main(self, index: int) -> None:
        stream = None
        try:
            if self._cuda:
                stream = self._cuda_stream()
        except BaseException as exc:  # reported to the constructor
            self._start_errors.append(exc)
        finally:
            self._started.wait()
        if self._start_errors:
            return
        while True:
            with self._cond:
                while not self._ready and not self._closed:
                    self._cond.wait()
                if not self._ready:  # closed and drained
                    return
                job = self._pop_ready_locked()
                self._dequeued_locked(job)
                if not job.future.set_running_or_notify_cancel() or job.token.cancelled:
                    # Caller gone while it waited: drop without running.
                    if not job.future.done():
                        job.future.set_exception(JobCancelled(job.token.reason or "cancelled"))
                    metrics.JOBS.labels(job.model, "cancelled").inc()
                    self._release_key_locked(job.key)
                    continue
                if job.deadline_at is not None and time.perf_counter() > job.deadline_at:
                    # Waited past its deadline: its result would come too late to be of use.
                    waited = time.perf_counter() - job.enqueued_at
                    job.future.set_exception(
                        PoolFull(
                            f"conversion job waited {waited:.2f} s in the queue, past its deadline",
                            retry_after_s=self._retry_hint_locked(),
                        )
                    )
                    metrics.JOBS.labels(job.model, "rejected").inc()
                    self._release_key_locked(job.key)
                    continue
                self._busy += 1
                self._busy_by_model[job.model] += 1
                metrics.BUSY_WORKERS.labels(job.model).set(self._busy_by_model[job.model])
                self._running_tokens.add(job.token)
            outcome = self._run_job(job, stream, index)
            with self._cond:
                self._busy -= 1
                self._busy_by_model[job.model] -= 1
                metrics.BUSY_WORKERS.labels(job.model).set(self._busy_by_model[job.model])
                self._running_tokens.discard(job.token)
                self._release_key_locked(job.key)
            # Settle only after the bookkeeping: a caller that sees its result also sees this worker idle again.
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _run_job(self, job: _Job, stream: Any, worker: int = -1) -> JobResult[Any] | BaseException:
        started = time.perf_counter()
        wait = started - job.enqueued_at
        metrics.QUEUE_WAIT_SECONDS.labels(job.model).observe(wait)
        try:
            with self._device_context(stream):
                value = job.fn(job.token)
                if stream is not None:
                    stream.synchronize()  # only this worker's stream: other workers' kernels keep running
        except JobCancelled as exc:
            metrics.JOBS.labels(job.model, "cancelled").inc()
            return exc
        except Exception as exc:  # the caller sees the engine's own exception
            metrics.JOBS.labels(job.model, "error").inc()
            return exc
        elapsed = time.perf_counter() - started
        self._job_ema_s = 0.8 * self._job_ema_s + 0.2 * elapsed
        metrics.JOBS.labels(job.model, "ok").inc()
        metrics.JOB_SECONDS.labels(job.model).observe(elapsed)
        if job.audio_seconds:
            metrics.AUDIO_SECONDS.labels(job.model).inc(job.audio_seconds)
            metrics.REAL_TIME_FACTOR.labels(job.model).observe(elapsed / job.audio_seconds)
        return JobResult(value, elapsed, wait, worker)

    @contextlib.contextmanager
    def _device_context(self, stream: Any) -> Iterator[None]:
        if stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(stream):
            yield

    # ---------------------------------------------------------------------------------------------------- state

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                workers=self.workers,
                busy=self._busy,
                queue_depth=self._queued,
                queue_capacity=self.capacity,
                cuda_streams=self.workers if self._cuda else 0,
            )

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    def close(self, *, cancel_running: bool = True, timeout: float | None = 30.0) -> None:
        """Refuse new work, drop queued jobs, stop running ones at their next check, and join the workers."""
        with self._cond:
            self._closed = True
            dropped = [job for queue in self._ready.values() for job in queue]
            for pending in self._blocked.values():
                dropped.extend(pending)
            self._ready.clear()
            self._blocked.clear()
            for job in dropped:
                self._dequeued_locked(job)
            if cancel_running:
                for token in self._running_tokens:
                    token.cancel("service shutting down")
            self._cond.notify_all()
        for job in dropped:
            job.token.cancel("service shutting down")
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(PoolClosed("voice conversion is shutting down", retry_after_s=1.0))
        self._shutdown_threads(timeout)

    def _shutdown_threads(self, timeout: float | None = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("workers still running after close: %s", ", ".join(alive))

    async def aclose(self, *, cancel_running: bool = True, join_timeout: float | None = 30.0) -> None:
        await asyncio.to_thread(self.close, cancel_running=cancel_running, timeout=join_timeout)

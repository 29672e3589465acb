"""Dynamic micro-batching: concurrent requests share one ``Extractor.run(requests)`` call.

Requests queue up as jobs (one or more :class:`~hugie.types.ExtractRequest`, any mode). A
dispatcher takes the oldest job, waits at most ``max_wait_ms`` for more, and runs everything it
gathered (up to ``max_batch`` passes) as one ``Extractor.run`` call in a thread executor, off the
event loop; each job then gets back exactly its own results. Instructions, entity types and schemas
batch together: ``run`` packs their passes across documents (a schema's relation passes follow its
entity passes inside the same call).

A job's cost on the queue is the passes known before any work: one per instruction or entity type,
plus one per relation of a schema (:meth:`cost`); ``hugie_batch_size`` records the passes that really
ran, relation passes of the subjects found included. Each request is held to the service's
:class:`~hugie.limits.RequestLimits` before its work starts. When every caller of a model call has
given up (timeout, disconnect, shutdown), the call stops between model batches.

Jobs of at most ``fast_lane_chars`` passes x characters go to a lane of their own with one model
thread, so a short request never waits behind a long one (a text at the length limit takes seconds).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

from hugie.limits import RequestLimits
from hugie.types import ExtractRequest

from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("hugie.api")


@dataclass(eq=False)
class _Job:
    future: asyncio.Future
    requests: list[ExtractRequest] = field(default_factory=list)
    cost: int = 1  # passes known before any work
    work: int = 1  # the most passes x characters it can cost


class _Lane:
    """A queue of jobs and the dispatcher that gathers them into model calls, ``slots`` calls at a time."""

    def __init__(self, batcher: MicroBatcher, name: str, slots: int):
        self.batcher, self.name = batcher, name
        self.queue: deque[_Job] = deque()
        self.wakeup = asyncio.Event()
        self.slots = asyncio.Semaphore(slots)
        self.dispatcher: asyncio.Task | None = None

    def start(self) -> None:
        self.dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=f"hugie-batcher-{self.name}")

    def pop(self) -> _Job:
        job = self.queue.popleft()
        self.batcher._dequeued(job)
        return job

    async def _wait_for_jobs(self, timeout: float | None) -> bool:
        """Wait until the queue is non-empty (or closing); False on timeout."""
        while not self.queue:
            if self.batcher._closing:
                return False
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return bool(self.queue)
        return True

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        max_batch, max_wait = self.batcher.max_batch, self.batcher.max_wait
        while True:
            await self.slots.acquire()
            if not await self._wait_for_jobs(None):
                self.slots.release()
                return  # closing and drained
            first = self.pop()
            batch, passes = [first], first.cost
            deadline = loop.time() + max_wait
            while passes < max_batch:
                if not self.queue and not await self._wait_for_jobs(max(0.0, deadline - loop.time())):
                    break
                nxt = self.queue[0]
                if passes + nxt.cost > max_batch:
                    break
                batch.append(self.pop())
                passes += nxt.cost
            self.batcher._start(batch, self)


class MicroBatcher:
    """Gathers jobs into model calls; see the module docstring."""

    def __init__(self, extractor, executor: Executor, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, concurrency: int = 1, retry_after_s: int = 1,
                 metrics: Metrics | None = None, limits: RequestLimits | None = None, fast_lane_chars: int = 0,
                 after_call=None):
        self.extractor = extractor
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics or Metrics()
        self.limits = limits
        self.fast_lane_chars = fast_lane_chars
        self.after_call = after_call  # run in the model thread after each model call
        self._queued = 0  # passes waiting (not yet running)
        self._lanes = {"main": _Lane(self, "main", concurrency)}
        if fast_lane_chars > 0:  # small jobs never wait behind a long one (the executor has a thread for them)
            self._lanes["fast"] = _Lane(self, "fast", 1)
        self._running: set[asyncio.Task] = set()
        self._closing = False

    # ------------------------------------------------------------------ public
    @property
    def depth(self) -> int:
        return self._queued

    def start(self) -> None:
        for lane in self._lanes.values():
            lane.start()

    def reserve(self, passes: int) -> None:
        """Raise 503 (with Retry-After) when ``passes`` more would overflow the queue.

        An empty queue always accepts, so one request larger than the queue can still be served.
        """
        if self._closing:
            raise ApiError(503, "E111", headers={"Retry-After": str(self.retry_after_s)})
        if self._queued and self._queued + passes > self.max_queue:
            raise ApiError(503, "E103", headers={"Retry-After": str(self.retry_after_s)},
                           value=self._queued, limit=self.max_queue, retry_after=self.retry_after_s)

    def cost(self, request: ExtractRequest) -> int:
        """Passes ``request`` puts on the queue: its first-stage passes and one per relation."""
        relations = len(request.schema_.relations) if request.schema_ is not None else 0
        return max(1, self.extractor.passes(request) + self.extractor.relation_passes(relations))

    def most_work(self, request: ExtractRequest) -> int:
        """The most passes x characters ``request`` can cost: its first passes, and every relation asked of as
        many subjects as the limits allow."""
        relations = len(request.schema_.relations) if request.schema_ is not None else 0
        subjects = self.limits.max_subjects if self.limits is not None and self.limits.max_subjects else 32
        return ((self.extractor.passes(request) + self.extractor.relation_passes(relations) * subjects)
                * max(1, len(request.text)))

    async def run(self, requests: list[ExtractRequest], *, reserved: bool = False) -> list:
        """One result per request, batched with whatever else is queued.

        ``reserved``: the caller already passed :meth:`reserve` for this work (batch requests
        reserve all their items at once, so they are admitted whole or not at all).
        """
        job = _Job(asyncio.get_running_loop().create_future(), list(requests), sum(self.cost(r) for r in requests),
                   sum(self.most_work(r) for r in requests))
        return await self._submit(job, reserved)

    async def close(self) -> None:
        """Stop taking jobs, finish every queued and running one, then return."""
        self._closing = True
        for lane in self._lanes.values():
            lane.wakeup.set()
        await asyncio.gather(*(lane.dispatcher for lane in self._lanes.values() if lane.dispatcher is not None))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # ------------------------------------------------------------------ internals
    def _lane_for(self, job: _Job) -> _Lane:
        fast = self._lanes.get("fast")
        return fast if fast is not None and job.work <= self.fast_lane_chars else self._lanes["main"]

    async def _submit(self, job: _Job, reserved: bool):
        if not reserved:
            self.reserve(job.cost)
        lane = self._lane_for(job)
        lane.queue.append(job)
        self._queued += job.cost
        self.metrics.queue_depth.set(self._queued)
        lane.wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # timed out or client gone: leave the queue if still in it
            try:
                lane.queue.remove(job)
                self._dequeued(job)
            except ValueError:
                pass
            raise

    def _dequeued(self, job: _Job) -> None:
        self._queued -= job.cost
        self.metrics.queue_depth.set(self._queued)

    def _start(self, batch: list[_Job], lane: _Lane) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch, lane))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job], lane: _Lane) -> None:
        try:
            live = [j for j in batch if not j.future.done()]  # drop jobs whose caller gave up
            if live:
                await self._call(live)
        except Exception as exc:  # noqa: BLE001 - every caller gets the error
            for job in batch:
                _fail(job, exc)
        finally:
            lane.slots.release()

    async def _call(self, jobs: list[_Job]) -> None:
        """One ``Extractor.run`` for every request of ``jobs``; each job gets its own results (or the error of
        one of its requests). The work stops between model calls once every caller has given up."""
        requests = [r for j in jobs for r in j.requests]
        cancel = threading.Event()

        def gave_up(_future) -> None:
            if all(j.future.cancelled() for j in jobs):
                cancel.set()

        for job in jobs:
            job.future.add_done_callback(gave_up)
        stats: dict = {}

        def fn():
            try:
                return self.extractor.run(requests, limits=self.limits, cancel=cancel, return_errors=True,
                                          stats=stats)
            finally:
                if self.after_call is not None:
                    self.after_call()

        self.metrics.batch_requests.observe(len(jobs))
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        finally:
            self.metrics.model_seconds.observe(time.perf_counter() - start)
            self.metrics.batch_size.observe(stats.get("passes", 0))
        at = 0
        for job in jobs:
            mine = results[at:at + len(job.requests)]
            at += len(job.requests)
            if job.future.done():
                continue
            error = next((r for r in mine if isinstance(r, BaseException)), None)
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(mine)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)

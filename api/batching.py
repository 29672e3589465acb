"""Dynamic micro-batching: concurrent requests share one ``Extractor.extract(pairs)`` call.

Requests queue up as jobs. A dispatcher takes the oldest job, waits at most ``max_wait_ms`` for
more, and runs everything it gathered (up to ``max_batch`` passes) as one call in a thread
executor, off the event loop; each job then gets back exactly its own slice of the results.

Jobs may ask for different thresholds and top-k: the call runs at the lowest threshold with no
top-k, and each job's slice is filtered to its own threshold and cut to its own top-k. That is
exact, because the Extractor's threshold only drops spans and its top-k only cuts the
score-ordered list.

Schema jobs (two dependent passes inside ``extract_schema``) run alone, in queue order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from hugie.errors import HugieError

from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("hugie.api")


@dataclass(eq=False)
class _Job:
    future: asyncio.Future
    pairs: list[tuple[str, str]] = field(default_factory=list)
    threshold: float | None = 0.5  # schema jobs: None = the model's defaults
    top_k: int | None = None
    schema: Any = None  # a Schema for schema jobs
    text: str = ""

    @property
    def is_schema(self) -> bool:
        return self.schema is not None

    @property
    def cost(self) -> int:
        """Passes this job puts on the model (schema jobs: at least one per type and relation)."""
        if self.is_schema:
            return max(1, len(self.schema.entities) + len(self.schema.relations))
        return len(self.pairs)


class MicroBatcher:
    """Gathers jobs into model calls; see the module docstring."""

    def __init__(self, extractor, executor: Executor, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, concurrency: int = 1, retry_after_s: int = 1,
                 metrics: Metrics | None = None):
        self.extractor = extractor
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics or Metrics()
        self.default_threshold = float(extractor.config.threshold)
        self._queue: deque[_Job] = deque()
        self._queued = 0  # passes waiting (not yet running)
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None
        self._closing = False

    # ------------------------------------------------------------------ public
    @property
    def depth(self) -> int:
        return self._queued

    def start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="hugie-batcher")

    def reserve(self, passes: int) -> None:
        """Raise 503 (with Retry-After) when ``passes`` more would overflow the queue.

        An empty queue always accepts, so one request larger than the queue can still be served.
        """
        if self._closing:
            raise ApiError(503, "E111", headers={"Retry-After": str(self.retry_after_s)})
        if self._queued and self._queued + passes > self.max_queue:
            raise ApiError(503, "E103", headers={"Retry-After": str(self.retry_after_s)},
                           value=self._queued, limit=self.max_queue, retry_after=self.retry_after_s)

    async def extract(self, pairs: list[tuple[str, str]], threshold: float | None = None,
                      top_k: int | None = None, *, reserved: bool = False) -> list[list]:
        """Spans for each (instruction, text) pair, batched with whatever else is queued.

        ``reserved``: the caller already passed :meth:`reserve` for this work (batch requests
        reserve all their items at once, so they are admitted whole or not at all).
        """
        job = _Job(asyncio.get_running_loop().create_future(), pairs=list(pairs),
                   threshold=self.default_threshold if threshold is None else float(threshold), top_k=top_k)
        return await self._submit(job, reserved)

    async def extract_schema(self, text: str, schema, threshold: float | None = None,
                             top_k: int | None = None, *, reserved: bool = False):
        """``Extractor.extract_schema_typed`` for one text, in queue order."""
        # None stays None: the Extractor then uses the model's own relation threshold for objects
        job = _Job(asyncio.get_running_loop().create_future(), schema=schema, text=text,
                   threshold=None if threshold is None else float(threshold), top_k=top_k)
        return await self._submit(job, reserved)

    @staticmethod
    def cost(item) -> int:
        """Passes an :class:`~hugie.types.ExtractRequest` puts on the queue."""
        schema = item.schema_
        return 1 if schema is None else max(1, len(schema.entities) + len(schema.relations))

    async def close(self) -> None:
        """Stop taking jobs, finish every queued and running one, then return."""
        self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            await self._dispatcher
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # ------------------------------------------------------------------ internals
    async def _submit(self, job: _Job, reserved: bool):
        if not reserved:
            self.reserve(job.cost)
        self._queue.append(job)
        self._queued += job.cost
        self.metrics.queue_depth.set(self._queued)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # timed out or client gone: leave the queue if still in it
            try:
                self._queue.remove(job)
                self._queued -= job.cost
                self.metrics.queue_depth.set(self._queued)
            except ValueError:
                pass
            raise

    def _pop(self) -> _Job:
        job = self._queue.popleft()
        self._queued -= job.cost
        self.metrics.queue_depth.set(self._queued)
        return job

    async def _wait_for_jobs(self, timeout: float | None) -> bool:
        """Wait until the queue is non-empty (or closing); False on timeout."""
        while not self._queue:
            if self._closing:
                return False
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                return bool(self._queue)
        return True

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            if not await self._wait_for_jobs(None):
                self._slots.release()
                return  # closing and drained
            first = self._pop()
            batch = [first]
            if not first.is_schema:
                passes = len(first.pairs)
                deadline = loop.time() + self.max_wait
                while passes < self.max_batch:
                    if not self._queue and not await self._wait_for_jobs(max(0.0, deadline - loop.time())):
                        break
                    nxt = self._queue[0]
                    if nxt.is_schema or passes + len(nxt.pairs) > self.max_batch:
                        break
                    batch.append(self._pop())
                    passes += len(nxt.pairs)
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Job]) -> None:
        try:
            live = [j for j in batch if not j.future.done()]  # drop jobs whose caller gave up
            if not live:
                return
            if live[0].is_schema:
                job = live[0]
                await self._call_schema(job)
                return
            try:
                await self._call_pairs(live)
            except HugieError:
                if len(live) == 1:
                    raise
                # one job's input broke the shared call: run each alone so only that one fails
                for job in live:
                    try:
                        await self._call_pairs([job])
                    except Exception as exc:  # noqa: BLE001 - handed to that caller
                        _fail(job, exc)
        except Exception as exc:  # noqa: BLE001 - every caller gets the error
            for job in batch:
                _fail(job, exc)
        finally:
            self._slots.release()

    async def _call_schema(self, job: _Job) -> None:
        fn = functools.partial(self.extractor.extract_schema_typed, job.text, job.schema,
                               threshold=job.threshold, top_k=job.top_k)
        result = await self._in_executor(fn, passes=job.cost, requests=1)
        if not job.future.done():
            job.future.set_result(result)

    async def _call_pairs(self, jobs: list[_Job]) -> None:
        pairs = [p for j in jobs for p in j.pairs]
        threshold = min(j.threshold for j in jobs)
        fn = functools.partial(self.extractor.extract, pairs, threshold=threshold)
        results = await self._in_executor(fn, passes=len(pairs), requests=len(jobs))
        at = 0
        for job in jobs:
            mine = results[at:at + len(job.pairs)]
            at += len(job.pairs)
            mine = [[s for s in spans if s.score >= job.threshold][:job.top_k] for spans in mine]
            if not job.future.done():
                job.future.set_result(mine)

    async def _in_executor(self, fn, *, passes: int, requests: int):
        self.metrics.batch_size.observe(passes)
        self.metrics.batch_requests.observe(requests)
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        finally:
            self.metrics.model_seconds.observe(time.perf_counter() - start)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)

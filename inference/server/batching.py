"""Dynamic batching: requests to one model that arrive close together run as one batch.

A ``Batcher`` serves one model and task. Requests wait in its queue; when the model's gate has a free slot, the
batcher takes the oldest request, every one queued behind it, and every one that arrives until that request has
waited ``max_wait_ms`` (or the batch holds ``max_batch_size``), then runs them together in a worker thread. A request
that waited longer than ``max_wait_ms`` for a slot does not wait again. With ``max_wait_ms=0`` (the server's
default) nothing waits to be batched: a batch is what queued while the model was busy. How the model runs a batch
(one forward, one ``generate``, groups of compatible requests) is the local backend's ``run_batch``; each request
gets its own answer or its own failure.

Each request learns three durations, reported in its ``Server-Timing``: ``queue`` (waiting for the gate's slot),
``batch`` (waiting for the batch to close after the slot was free) and the batch's ``inference``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .gate import Admission, Gate
from .http import ApiError

__all__ = ["Batched", "Batcher", "Queued"]

log = logging.getLogger("inference.server")


@dataclass(frozen=True)
class Batched:
    """A request's answer from a batch, and how it waited: ``queue_ms`` for the slot, ``batch_ms`` for the batch."""

    outcome: Any
    queue_ms: float
    batch_ms: float
    size: int


@dataclass(eq=False)
class Queued:
    """One request in a batcher's queue, until its batch starts (``Batcher.leave`` takes it out before that)."""

    call: Any
    admission: Admission
    future: asyncio.Future[Batched]
    key: Hashable = None
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    started: bool = False


class Batcher:
    """Collects requests for one model into batches of up to ``max_batch_size``, waiting at most ``max_wait_ms``.

    ``key(call)`` says which requests may share a batch (text generation: the same generation parameters; a seeded
    request: none other); a batch takes the oldest request and those of its key, the others keep their places.

    Example:
        >>> batcher = Batcher("yolos", gate, run_batch=service.predict_batch, max_batch_size=8, max_wait_ms=5)
        >>> queued = batcher.submit(call, admission)   # the admission comes from gate.admit()
        >>> batched = await queued.future              # the answer, or the request's own failure, raised
        >>> batcher.leave(queued)                      # the client went away: out of the queue (unless running)
        >>> await batcher.aclose()
    """

    def __init__(self, name: str, gate: Gate, run_batch: Callable[[list[Any]], list[Any]], *, max_batch_size: int,
                 max_wait_ms: float, key: Callable[[Any], Hashable] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be at least 1 and max_wait_ms at least 0")
        self.name, self.gate, self.run_batch = name, gate, run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.key, self.on_batch = key, on_batch
        self._queue: deque[Queued] = deque()
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    def submit(self, call: Any, admission: Admission) -> Queued:
        """Queue ``call`` (admitted at the gate); its future gets its ``Batched`` answer or its failure."""
        if self._closed:
            raise ApiError("busy", "the server is stopping: retry on another replica or shortly")
        queued = Queued(call, admission, asyncio.get_running_loop().create_future(),
                        self.key(call) if self.key is not None else None)
        self._queue.append(queued)
        self._arrived.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect_forever(), name=f"batcher-{self.name}")
        return queued

    def __len__(self) -> int:
        """Requests waiting (not in a batch yet)."""
        return sum(1 for queued in self._queue if not queued.cancelled)

    def leave(self, queued: Queued) -> bool:
        """Take ``queued`` out (its client went away), freeing what it holds; False when its batch already runs."""
        if queued.started:
            return False
        queued.cancelled = True
        try:
            self._queue.remove(queued)  # at most the gate's places long
        except ValueError:
            pass  # in a batch that is still open: left out when it closes
        return True

    async def aclose(self) -> None:
        """Stop collecting; batches that run finish; requests still queued get 503 ``busy`` (the server stops)."""
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            queued = self._queue.popleft()
            if not queued.future.done():
                queued.future.set_exception(ApiError("busy", "the server is stopping: retry shortly"))

    async def _collect_forever(self) -> None:
        while True:
            while not self._live():  # the slot is taken only for work: an idle batcher holds none
                self._arrived.clear()
                await self._arrived.wait()
            await self.gate.take_slot()
            try:
                batch = await self._collect()
            except BaseException:
                self.gate.give_slot()
                raise
            if batch is None:  # everyone left while the slot was awaited
                self.gate.give_slot()
                continue
            self._start(*batch)

    def _start(self, opened: float, batch: list[Queued]) -> None:
        """Hand the batch to a worker thread at once (no event-loop turn in between: a loop busy reading other
        requests would make the model wait), and deliver its answers when it is done."""
        closed = time.perf_counter()
        if self.on_batch is not None:
            self.on_batch(len(batch))
        work = asyncio.get_running_loop().run_in_executor(None, self.run_batch, [queued.call for queued in batch])
        task = asyncio.ensure_future(self._deliver(work, opened, closed, batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _collect(self) -> tuple[float, list[Queued]] | None:
        """The next batch, once the gate's slot is ours: the oldest request and those of its key that join it in
        time (others keep their places in the queue)."""
        slot_free = time.perf_counter()
        if not self._live():
            return None
        first = self._queue[0]
        opened, deadline = max(slot_free, first.enqueued), first.enqueued + self.max_wait
        batch: list[Queued] = []
        try:
            while True:
                self._take(batch, first.key)
                remaining = deadline - time.perf_counter()
                if len(batch) >= self.max_batch_size or remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            self._queue.extendleft(reversed(batch))  # the server stops: they are answered by aclose
            raise
        batch = [queued for queued in batch if not queued.cancelled]  # left while the batch was open
        if not batch:
            return None
        for queued in batch:
            queued.started = True
        self.gate.start(queued.admission for queued in batch)
        return opened, batch

    def _take(self, batch: list[Queued], key: Hashable) -> None:
        """Move the queue's requests of ``key`` into ``batch``, in order, until it is full."""
        if len(batch) >= self.max_batch_size or not self._queue:
            return
        others: list[Queued] = []
        while self._queue and len(batch) < self.max_batch_size:
            queued = self._queue.popleft()
            if queued.cancelled:
                continue
            (batch if queued.key == key else others).append(queued)
        self._queue.extendleft(reversed(others))

    def _live(self) -> bool:
        """Whether a request waits that has not left (those that left are dropped from the front)."""
        while self._queue and self._queue[0].cancelled:
            self._queue.popleft()
        return bool(self._queue)

    async def _deliver(self, work: asyncio.Future, opened: float, closed: float, batch: list[Queued]) -> None:
        try:
            try:
                outcomes = await work
            except Exception as exc:  # the batch as a whole (its model failed to load): every request's failure
                outcomes = [exc] * len(batch)
            for queued, outcome in zip(batch, outcomes):
                if queued.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    queued.future.set_exception(outcome)
                else:
                    queued.future.set_result(Batched(
                        outcome, queue_ms=max(0.0, opened - queued.enqueued) * 1000,
                        batch_ms=(closed - max(opened, queued.enqueued)) * 1000, size=len(batch)))
        finally:
            self.gate.give_slot()
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(ApiError("busy", "the server is stopping: retry shortly"))

"""Admission to one model: a few requests (or batches) run, a few more wait, the rest are told to come back (503
``busy``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from .http import ApiError

__all__ = ["Admission", "Gate"]


class Admission:
    """One request's place at a ``Gate`` (what ``Gate.release`` needs to give it back exactly once)."""

    __slots__ = ("running", "holds_slot", "released")

    def __init__(self) -> None:
        self.running = False
        self.holds_slot = False  # a request that runs alone holds a slot; a batch's requests share the batch's
        self.released = False


class Gate:
    """``concurrency`` slots run at once, each one request or one batch of up to ``batch_size``; ``queue_size`` more
    requests may wait. The gate owns every count and slot.

    Example:
        >>> admission = gate.admit()          # or ApiError("busy"): every place is taken
        >>> queue_ms = await gate.wait(admission)
        >>> ...                               # run the request
        >>> gate.release(admission)           # idempotent: an event stream may end twice

    A batcher takes a slot for a whole batch instead (``take_slot``, ``start``, ``give_slot``); each request of the
    batch is still released on its own.
    """

    def __init__(self, name: str, concurrency: int, queue_size: int, batch_size: int = 1) -> None:
        self.name, self.concurrency, self.queue_size = name, concurrency, queue_size
        #: Requests admitted at once: what the slots run, and the queue.
        self.places = concurrency * batch_size + queue_size
        #: Requests admitted and not released: running plus waiting.
        self.in_flight = 0
        #: Of those, the ones that run (alone or in a batch); the rest wait.
        self.running = 0
        self._slots = asyncio.Semaphore(concurrency)

    def admit(self) -> Admission:
        """Take a place, or refuse with 503 ``busy`` when every place is taken."""
        if self.in_flight >= self.places:
            raise ApiError("busy", f"model {self.name!r} is busy ({self.in_flight} requests in flight): retry shortly")
        self.in_flight += 1
        return Admission()

    async def wait(self, admission: Admission) -> float:
        """Wait for a free slot of its own; returns the milliseconds waited (the request's queue time)."""
        started = time.perf_counter()
        await self._slots.acquire()
        admission.holds_slot = True
        self.start((admission,))
        return (time.perf_counter() - started) * 1000

    async def take_slot(self) -> None:
        """Wait for a free slot, for a batch (``give_slot`` frees it)."""
        await self._slots.acquire()

    def give_slot(self) -> None:
        self._slots.release()

    def start(self, admissions: Iterable[Admission]) -> None:
        """These admitted requests now run."""
        for admission in admissions:
            if not admission.released and not admission.running:
                admission.running = True
                self.running += 1

    def release(self, admission: Admission) -> None:
        """Give the place (and the slot, if the request held one) back; a second call does nothing."""
        if admission.released:
            return
        admission.released = True
        if admission.holds_slot:
            self._slots.release()
        if admission.running:
            self.running -= 1
        self.in_flight -= 1

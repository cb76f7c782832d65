"""Admission to one model: a few requests run, a few more wait, the rest are told to come back (503 ``busy``)."""

from __future__ import annotations

import asyncio
import time

from .http import ApiError

__all__ = ["Admission", "Gate"]


class Admission:
    """One request's place at a ``Gate`` (what ``Gate.release`` needs to give it back exactly once)."""

    __slots__ = ("running", "released")

    def __init__(self) -> None:
        self.running = False
        self.released = False


class Gate:
    """``concurrency`` requests run at once, ``queue_size`` more wait; the gate owns every count and slot.

    Example:
        >>> admission = gate.admit()          # or ApiError("busy"): every place is taken
        >>> queue_ms = await gate.wait(admission)
        >>> ...                               # run the request
        >>> gate.release(admission)           # idempotent: an event stream may end twice
    """

    def __init__(self, name: str, concurrency: int, queue_size: int) -> None:
        self.name, self.concurrency, self.queue_size = name, concurrency, queue_size
        #: Requests admitted and not released: running plus waiting.
        self.in_flight = 0
        #: Of those, the ones that hold a slot (the rest wait).
        self.running = 0
        self._slots = asyncio.Semaphore(concurrency)

    def admit(self) -> Admission:
        """Take a place, or refuse with 503 ``busy`` when every place is taken."""
        if self.in_flight >= self.concurrency + self.queue_size:
            raise ApiError("busy", f"model {self.name!r} is busy ({self.in_flight} requests in flight): retry shortly")
        self.in_flight += 1
        return Admission()

    async def wait(self, admission: Admission) -> float:
        """Wait for a free slot; returns the milliseconds waited (the request's queue time)."""
        started = time.perf_counter()
        await self._slots.acquire()
        admission.running = True
        self.running += 1
        return (time.perf_counter() - started) * 1000

    def release(self, admission: Admission) -> None:
        """Give the place (and the slot, if it ran) back; a second call does nothing."""
        if admission.released:
            return
        admission.released = True
        if admission.running:
            self._slots.release()
            self.running -= 1
        self.in_flight -= 1

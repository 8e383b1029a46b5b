"""Events from the engine thread to the asyncio loop, one wake-up of the loop per batch.

The engine emits an event per token per row (`requests.Delta`, `Finish`, `Done`); with 64 rows
decoding that is 64 events per step. `loop.call_soon_threadsafe` for each one writes to the loop's
self-pipe and schedules a callback each time. A `Mailbox` appends events to a list under a lock
and schedules one drain only when the list was empty: what the engine produced while the loop was
busy arrives in one callback, in order, each on its request's `asyncio.Queue`. `take_batch` reads
a queue a batch at a time, optionally holding a while so that one write carries more tokens.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self.wakeups = 0  # drains scheduled (for tests and stats)

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Thread-safe: `item` goes on `queue` in the loop's thread, after every earlier post."""
        with self._lock:
            self._pending.append((queue, item))
            if len(self._pending) > 1:  # a drain is already scheduled and will take it
                return
            self.wakeups += 1
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for queue, item in items:
            queue.put_nowait(item)


async def take_batch(queue: asyncio.Queue, hold_s: float = 0.0) -> list:
    """The next item of `queue` and every one already behind it; with `hold_s` > 0, also those
    that arrive within `hold_s` of the first (a stream's chunk then carries several tokens)."""
    items = [await queue.get()]
    if hold_s > 0:
        await asyncio.sleep(hold_s)
    while not queue.empty():
        items.append(queue.get_nowait())
    return items

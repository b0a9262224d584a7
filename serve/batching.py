"""Dynamic batching that follows the load: one forward pass at a time, and each takes every
request that queued up while the last one ran.

    batcher = Batcher(run_batch, max_batch_size=32, batch_wait_timeout_s=0.002)
    result = await batcher.submit(item)     # run_batch(list of items) -> list of results

- A model that is idle waits at most `batch_wait_timeout_s` after the oldest waiting request
  for company, then runs what it has (low load: latency stays forward pass + timeout).
- While a batch runs, requests queue. When it ends, the next batch takes up to
  `max_batch_size` of them at once; requests that already waited that long start at once
  (high load: batches grow with the backlog, and the forward pass costs less per request).

Why not `@serve.batch`: Ray Serve 2.60 forms the next batch while the previous one is still
running and closes it `batch_wait_timeout_s` after its first request, so under load every
batch holds only the requests of one timeout window, and the batches queue behind each
other. Measured in bench/serve.py (a 7 ms forward pass, 32 concurrent clients): 1.9 requests
per batch and 270 ms spent queued, with the model busy all the time running tiny batches.

Pure asyncio: no Ray, no torch. Settings can change while it runs (`reconfigure`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

RunBatch = Callable[[list[Any]], Awaitable[Sequence[Any]]]


class Batcher:
    """Queue `submit`ted items; one loop runs them through `run_batch` in batches."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, batch_wait_timeout_s: float):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._queue: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        """Queue `item` and wait for its result (or the exception its batch raised)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve_batches())
        future = loop.create_future()
        self._queue.append((item, future, loop.time()))
        self._arrived.set()
        return await future

    def close(self) -> None:
        """Stop the loop; requests still queued get CancelledError."""
        if self._task is not None:
            self._task.cancel()
        while self._queue:
            self._queue.popleft()[1].cancel()

    async def _serve_batches(self) -> None:
        while True:
            await self._fill()
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                item, future, _ = self._queue.popleft()
                if not future.done():  # a client that gave up leaves a cancelled future
                    batch.append((item, future))
            if not batch:
                continue
            try:
                results = await self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)}")
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _fill(self) -> None:
        """Return once a batch should run: it is full, or the oldest queued request has waited
        `batch_wait_timeout_s` (at once if it already waited that long behind the last batch)."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0][2] + self.batch_wait_timeout_s
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

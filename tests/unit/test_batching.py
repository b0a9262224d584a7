"""serve/batching.py: batches follow the backlog, an idle model waits only the timeout, a failing
batch fails only its own requests, clients that gave up are skipped. Pure asyncio.

The stand-in model is gated: a batch starts, tells the test, and runs only once the test lets it
finish, so what queues while the model is busy is decided by the test, not by sleeps.
"""

import asyncio
import time

import pytest

from serve.batching import Batcher


class Model:
    """A forward pass that records its batches; with `gated`, each one waits for `finish()`."""

    def __init__(self, *, gated: bool = False, fail_on: object = None):
        self.gated, self.fail_on = gated, fail_on
        self.batches: list[list] = []
        self.running = asyncio.Event()
        self._finish = asyncio.Event()

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if self.gated:
            self.running.set()
            await self._finish.wait()
            self._finish.clear()
            self.running.clear()
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]

    def finish(self, *, ungate: bool = False) -> None:
        """Let the running batch finish (and, with `ungate`, every later one at once)."""
        self.gated = not ungate and self.gated
        self._finish.set()


async def settle() -> None:
    """Let every ready task run until it blocks (submits reach the queue)."""
    for _ in range(10):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_results_come_back_to_their_own_callers():
    async def main():
        batcher = Batcher(Model(), max_batch_size=8, batch_wait_timeout_s=0.01)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert run(main()) == [i * 10 for i in range(20)]


def test_batches_grow_with_the_backlog_while_the_model_is_busy():
    """Requests that queue behind a running batch all go into the next one, not into many
    small batches closed by the timeout (what @serve.batch does)."""

    async def main():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=32, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await model.running.wait()  # the first batch is on the model now
        later = [asyncio.create_task(batcher.submit(i)) for i in range(1, 25)]
        await settle()
        model.finish(ungate=True)
        return await asyncio.gather(first, *later), model.batches

    results, batches = run(main())
    assert results == [i * 10 for i in range(25)]
    assert [len(batch) for batch in batches] == [1, 24]


def test_max_batch_size_caps_a_batch_and_can_change_while_running():
    async def main():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await model.running.wait()
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
        await settle()
        model.finish(ungate=True)
        await asyncio.gather(first, *queued)
        batcher.max_batch_size = 2
        model.gated = True
        second = asyncio.create_task(batcher.submit(0))
        await model.running.wait()
        more = [asyncio.create_task(batcher.submit(i)) for i in range(1, 5)]
        await settle()
        model.finish(ungate=True)
        await asyncio.gather(second, *more)
        return [len(batch) for batch in model.batches]

    assert run(main()) == [1, 4, 4, 2, 1, 2, 2]


def test_an_idle_model_waits_at_most_the_timeout():
    async def main():
        model = Model()
        batcher = Batcher(model, max_batch_size=32, batch_wait_timeout_s=0.05)
        started = time.perf_counter()
        await batcher.submit(1)
        return time.perf_counter() - started, model.batches

    waited, batches = run(main())
    assert waited >= 0.04, "a lone request should wait for company, up to the timeout"
    assert batches == [[1]]


def test_a_failing_batch_fails_its_requests_only():
    async def main():
        model = Model(gated=True, fail_on=3)
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await model.running.wait()
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 8)]
        await settle()
        model.finish(ungate=True)
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        return results, await batcher.submit(100), model.batches

    results, after, batches = run(main())
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7], [100]]
    assert [isinstance(r, ValueError) for r in results] == [False] + [True] * 4 + [False] * 3
    assert [results[i] for i in (0, 5, 6, 7)] == [0, 50, 60, 70]
    assert after == 1000  # the loop goes on after a failed batch


def test_a_client_that_gave_up_is_left_out_of_the_batch():
    async def main():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.0)
        busy = asyncio.create_task(batcher.submit(0))
        await model.running.wait()
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await settle()
        gone.cancel()
        await settle()
        model.finish(ungate=True)
        results = await asyncio.gather(busy, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return results, model.batches

    results, batches = run(main())
    assert results == [0, 20]
    assert batches == [[0], [2]]


def test_close_cancels_running_and_queued_requests():
    async def main():
        model = Model(gated=True)
        batcher = Batcher(model, max_batch_size=1, batch_wait_timeout_s=0.0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await model.running.wait()
        batcher.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert all(isinstance(result, asyncio.CancelledError) for result in results)

"""serve/batching.py: batches follow the backlog, an idle model waits only the timeout, a failing
batch fails only its own requests, clients that gave up are skipped. Pure asyncio."""

import asyncio
import time

import pytest

from serve.batching import Batcher


class Model:
    """A stand-in forward pass that takes `seconds` per batch and records the batch sizes."""

    def __init__(self, seconds: float = 0.0, fail_on: object = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[list] = []

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]


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
    model = Model(seconds=0.05)

    async def main():
        batcher = Batcher(model, max_batch_size=32, batch_wait_timeout_s=0.001)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch is running now
        later = []
        for i in range(1, 25):  # arrive one by one, 1 ms apart, each > the timeout
            later.append(asyncio.create_task(batcher.submit(i)))
            await asyncio.sleep(0.001)
        return await asyncio.gather(first, *later)

    assert run(main()) == [i * 10 for i in range(25)]
    assert [len(batch) for batch in model.batches] == [1, 24]


def test_max_batch_size_caps_a_batch_and_can_change_while_running():
    model = Model(seconds=0.02)

    async def main():
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        batcher.max_batch_size = 2
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))

    run(main())
    sizes = [len(batch) for batch in model.batches]
    assert max(sizes[:-2]) == 4 and sum(sizes[:-2]) == 10
    assert sizes[-2:] == [2, 2]


def test_an_idle_model_waits_at_most_the_timeout():
    model = Model()

    async def main():
        batcher = Batcher(model, max_batch_size=32, batch_wait_timeout_s=0.05)
        started = time.perf_counter()
        await batcher.submit(1)
        return time.perf_counter() - started

    waited = run(main())
    assert 0.04 <= waited < 1.0, waited
    assert model.batches == [[1]]


def test_a_failing_batch_fails_its_requests_only():
    model = Model(seconds=0.02, fail_on=3)

    async def main():
        batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(8)), return_exceptions=True)
        after = await batcher.submit(100)
        return first, after

    first, after = run(main())
    failed = [i for i, result in enumerate(first) if isinstance(result, ValueError)]
    batch_with_3 = next(batch for batch in model.batches if 3 in batch)
    assert failed == sorted(batch_with_3)
    assert all(first[i] == i * 10 for i in range(8) if i not in failed)
    assert after == 1000  # the loop goes on after a failed batch


def test_a_client_that_gave_up_is_left_out_of_the_batch():
    model = Model(seconds=0.05)

    async def main():
        batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.0)
        busy = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.005)
        gone.cancel()
        results = await asyncio.gather(busy, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return results

    assert run(main()) == [0, 20]
    assert model.batches == [[0], [2]]


def test_close_cancels_queued_requests():
    async def main():
        batcher = Batcher(Model(seconds=0.05), max_batch_size=1, batch_wait_timeout_s=0.0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        batcher.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert all(isinstance(result, asyncio.CancelledError) for result in results)

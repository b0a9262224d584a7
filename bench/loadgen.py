"""An HTTP load generator that runs outside Ray: closed loop at fixed concurrency, open loop at
a fixed offered rate. Only for 127.0.0.1; bounded in time and in connections.

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/models/m:predict --body-file b.json \\
        --concurrency 1,8,32 --rate 100 --duration 5 --warmup 1

Prints one JSON list, one entry per level: requests/s, p50/p99/mean latency (ms), errors.

It speaks HTTP/1.1 with keep-alive over asyncio streams itself: a general client (httpx,
aiohttp) costs more CPU per request than the servers under test on a 2-core machine, and
whatever the client burns is taken from the server. Open-loop latency is measured from each
request's scheduled send time, so a server that falls behind is charged for the queue it
builds (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlparse

MAX_OPEN_CONNECTIONS = 512  # open loop: requests beyond this many in flight count as dropped
REQUEST_TIMEOUT_S = 30.0


class Connection:
    """One keep-alive connection that sends the same POST again and again."""

    def __init__(self, host: str, port: int, request: bytes):
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        """Send the request, read the whole response; returns the HTTP status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readline()).strip() or b"0", 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    async def ok(self) -> bool:
        """One request: whether it was answered 200 within REQUEST_TIMEOUT_S."""
        try:
            return await asyncio.wait_for(self.post(), REQUEST_TIMEOUT_S) == 200
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError):
            self.close()
            return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("the load generator only targets 127.0.0.1")
    head = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parsed.hostname, parsed.port or 80, head.encode() + body


class Window:
    """The measured window of one level, shared by the HTTP and gRPC generators: a request
    counts when it *completes* inside [start + warmup, start + warmup + duration], whenever it
    was sent, so the requests in flight at either edge are counted the same way a meter on the
    server would, and requests/s is completions in the window over its length. Latencies are
    those of the same requests (closed loop), or of the requests *scheduled* in the window
    (open loop, `by_schedule`: a server that falls behind is charged for its whole queue)."""

    def __init__(self, *, warmup: float, duration: float):
        self.start = time.perf_counter()
        self.measure_from, self.stop = self.start + warmup, self.start + warmup + duration
        self.duration = duration
        self.latencies: list[float] = []
        self.completed = self.errors = 0

    def open(self) -> bool:
        """Whether a closed-loop client should send another request."""
        return time.perf_counter() < self.stop

    def record(self, sent: float, ok: bool, *, by_schedule: bool = False) -> None:
        """One answered (ok) or failed request, sent (or scheduled) at `sent` (perf_counter)."""
        done = time.perf_counter()
        in_window = self.measure_from <= done <= self.stop
        if ok and in_window:
            self.completed += 1
        if by_schedule and sent >= self.measure_from or not by_schedule and in_window:
            if ok:
                self.latencies.append(done - sent)
            else:
                self.errors += 1

    def summary(self, **level) -> dict:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            if not ordered:
                return float("nan")
            return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

        return {
            **level,
            "seconds": round(self.duration, 2),
            "completed": self.completed,
            "errors": self.errors,
            "requests_per_s": self.completed / self.duration if self.duration else 0.0,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "mean_ms": sum(ordered) / len(ordered) * 1000 if ordered else float("nan"),
        }


async def drive_clients(clients: list, window: Window) -> None:
    """The closed loop of both generators: each client (an object with `async ok() -> bool`
    and `close()`) sends its next request when its last one is answered, until the window
    ends."""

    async def drive(client):
        while window.open():
            sent = time.perf_counter()
            window.record(sent, await client.ok())
        client.close()

    await asyncio.gather(*(drive(client) for client in clients))


async def closed_loop(target, *, concurrency: int, duration: float, warmup: float) -> dict:
    """`concurrency` clients, each on its own keep-alive connection."""
    host, port, request = target
    window = Window(warmup=warmup, duration=duration)
    await drive_clients([Connection(host, port, request) for _ in range(concurrency)], window)
    return window.summary(mode="closed", concurrency=concurrency)


async def open_loop(target, *, rate: float, duration: float, warmup: float) -> dict:
    """Requests sent at a fixed rate whether or not earlier ones were answered."""
    host, port, request = target
    idle: list[Connection] = []
    dropped = in_flight = 0
    window = Window(warmup=warmup, duration=duration)
    total = int(rate * (warmup + duration))

    async def one(scheduled: float):
        nonlocal in_flight
        connection = idle.pop() if idle else Connection(host, port, request)
        ok = await connection.ok()
        in_flight -= 1
        if connection.writer is not None:
            idle.append(connection)
        window.record(scheduled, ok, by_schedule=True)

    tasks = []
    for i in range(total):
        scheduled = window.start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= MAX_OPEN_CONNECTIONS:
            dropped += scheduled >= window.measure_from
            continue
        in_flight += 1
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    window.errors += dropped
    return {**window.summary(mode="open", rate=rate), "dropped": dropped}


async def run_levels(url: str, body: bytes, *, concurrency: list[int], rate: float | None,
                     duration: float, warmup: float) -> list[dict]:  # fmt: skip
    target = build_request(url, body)
    results = []
    for level in concurrency:
        results.append(
            await closed_loop(target, concurrency=level, duration=duration, warmup=warmup)
        )
    if rate:
        results.append(await open_loop(target, rate=rate, duration=duration, warmup=warmup))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True, help="the JSON body of every request")
    parser.add_argument("--concurrency", default="1,8,32", help="closed-loop levels, e.g. 1,8,32")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop requests/s (0: none)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    with open(args.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop  # a faster event loop leaves more of the CPU to the server under test

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    results = runner(
        run_levels(
            args.url,
            body,
            concurrency=levels,
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
        )  # fmt: skip
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

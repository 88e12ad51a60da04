"""The one race harness: threads, each with its own client, released together by a barrier.

`Racers(count, connect)` keeps `count` threads; each opens its own client with `connect()` the
first time it runs a call (an HTTP client, a database connection, a session) and keeps it for
later races; `close()` closes them all. `race(calls)` hands each call to its own thread, holds
every thread at a barrier until all have their client, releases them together and returns the
results in call order; an exception in any call is raised here, not lost in its thread.
"""

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from typing import Generic, TypeVar

import httpx2 as httpx

C = TypeVar("C")
R = TypeVar("R")


class Racers(Generic[C]):
    """A pool of `count` threads, each with its own client from `connect`, raced through a barrier."""

    def __init__(self, count: int, connect: Callable[[], AbstractContextManager[C]]) -> None:
        self.count = count
        self._connect = connect
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="racer")
        self._local = threading.local()
        self._opened = ExitStack()
        self._lock = threading.Lock()

    def _client(self) -> C:
        if not hasattr(self._local, "client"):
            manager = self._connect()
            with self._lock:
                self._local.client = self._opened.enter_context(manager)
        return self._local.client

    def race(self, calls: Sequence[Callable[[C], R]], *, timeout: float = 120) -> list[R]:
        """Run every call at once, one per thread; return the results in call order.

        Every call waits at the barrier until all have their client, so no thread can take
        a second call meanwhile: each runs on its own thread, with its own client.
        """
        if not 0 < len(calls) <= self.count:
            raise ValueError(f"{len(calls)} calls for {self.count} racers")
        barrier = threading.Barrier(len(calls), timeout=timeout)

        def run(call: Callable[[C], R]) -> R:
            try:
                client = self._client()
            except BaseException:
                barrier.abort()  # the others would wait for this thread forever
                raise
            barrier.wait()
            return call(client)

        return list(self._pool.map(run, calls, timeout=timeout))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._opened.close()

    def __enter__(self) -> "Racers[C]":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def http_racers(base_url: str, count: int, *, timeout: float = 30) -> Racers[httpx.Client]:
    """Racers that each hold their own HTTP connection to `base_url`."""
    return Racers(count, lambda: httpx.Client(base_url=base_url, timeout=timeout))

"""Run a function over items in a thread pool ahead of the consumer, yielding results in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["prefetch_map"]


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2,
                 ahead: int = 8) -> Iterator[tuple[T, R | Exception]]:
    """Yield `(item, fn(item))` for every item, in input order, computing up to `ahead` results early.

    `fn` runs in a pool of `workers` threads, so decoding (PyAV and numpy release the GIL) overlaps
    with whatever the consumer does with the previous results (encoding). At most `ahead` items are
    in flight or waiting, which bounds memory; `items` is consumed lazily.

    An exception raised by `fn` is *returned* in place of the result (`(item, exc)`), never raised,
    so one bad sample does not stop the stream: check `isinstance(result, Exception)`. Only
    non-`Exception` errors (KeyboardInterrupt, SystemExit) propagate. Closing the generator early
    (break, or an error in the consumer) cancels the items not yet started and does not wait for
    the running ones.
    """
    if workers < 1:
        raise ValueError(f"prefetch_map: workers must be >= 1, got {workers}")
    ahead = max(ahead, workers)
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    try:
        def fill() -> None:
            while len(pending) < ahead:
                try:
                    item = next(source)
                except StopIteration:
                    return
                pending.append((item, pool.submit(fn, item)))

        fill()
        while pending:
            item, future = pending.popleft()
            fill()                                   # keep the pool busy while we wait and while the consumer works
            exc = future.exception()                 # waits for the result
            if exc is not None and not isinstance(exc, Exception):
                raise exc
            yield item, (exc if exc is not None else future.result())
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)

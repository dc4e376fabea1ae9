"""featstore.prefetch.prefetch_map: input order, exceptions returned, work overlaps (no timing asserts)."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from featstore.prefetch import prefetch_map


def test_order_preserved_when_results_finish_out_of_order():
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.01) for _ in range(40)]

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    out = list(prefetch_map(slow_square, range(40), workers=4, ahead=8))
    assert [item for item, _ in out] == list(range(40))
    assert [r for _, r in out] == [i * i for i in range(40)]


def test_exceptions_are_returned_not_raised():
    def fn(i: int) -> int:
        if i % 3 == 1:
            raise ValueError(f"bad {i}")
        return i

    out = list(prefetch_map(fn, range(10), workers=2))
    assert [item for item, _ in out] == list(range(10))
    for item, result in out:
        if item % 3 == 1:
            assert isinstance(result, ValueError) and str(result) == f"bad {item}"
        else:
            assert result == item


def test_calls_run_concurrently():
    """With 2 workers, pairs of calls meet at a 2-party barrier; run one at a time they would time out."""
    barrier = threading.Barrier(2, timeout=10)

    def fn(i: int) -> int:
        barrier.wait()
        return i

    out = list(prefetch_map(fn, range(6), workers=2, ahead=4))
    assert [r for _, r in out] == list(range(6))   # a BrokenBarrierError would be returned instead


def test_work_runs_ahead_while_consumer_is_busy():
    """While the consumer holds item 0 (it is 'encoding'), later items are already being decoded."""
    reached = threading.Event()

    def fn(i: int) -> int:
        if i == 3:
            reached.set()
        return i

    gen = prefetch_map(fn, range(10), workers=2, ahead=4)
    item, _ = next(gen)
    assert item == 0
    assert reached.wait(timeout=10), "item 3 was not started while the consumer held item 0"
    assert [i for i, _ in gen] == list(range(1, 10))


def test_lookahead_is_bounded_and_input_is_lazy():
    started: list[int] = []
    lock = threading.Lock()

    def fn(i: int) -> int:
        with lock:
            started.append(i)
        return i

    gen = prefetch_map(fn, itertools.count(), workers=1, ahead=3)   # an endless input must not be drained
    assert next(gen)[0] == 0
    time.sleep(0.05)                                                 # let the pool do what it may
    assert len(started) <= 1 + 3
    gen.close()                                                      # cancels what is pending; no hang


def test_non_exception_errors_propagate():
    def fn(i: int) -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(prefetch_map(fn, range(3)))


def test_bad_workers():
    with pytest.raises(ValueError):
        list(prefetch_map(lambda x: x, range(3), workers=0))

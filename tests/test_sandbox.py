"""WorkerPool: hard per-item time bound (Python and C hangs), memory bound, crashes,
order of results, reuse across calls, and shutdown."""

from __future__ import annotations

import functools
import os
import re
import time

import pytest

from verirl import Failure
from verirl.sandbox import WorkerPool, default_workers

TIMEOUT = 1.0
MARGIN = 1.5  # seconds allowed past the bound: kill, reap and IPC on a loaded 2-core box


def work(item):
    """Top-level (picklable) test function: the item names what it does."""
    if item == "sleep":  # hangs in Python
        time.sleep(60)
    if item == "cpow":  # hangs in C with bounded memory: modular power, 3.3M-bit exponent
        return pow(7, 10**1_000_000, 10**4000 + 1)
    if item == "bigpow":  # hangs in C and allocates without bound
        return pow(10, 10**12)
    if item == "regex":  # catastrophic backtracking inside the C regex engine
        return bool(re.match(r"(a+)+$", "a" * 40 + "b"))
    if item == "alloc":
        return len(bytearray(8 * 2**30))
    if item == "exit":
        os._exit(3)
    if item == "raise":
        raise ValueError("bad item 'raise'")
    if item == "unpicklable":
        return lambda: None
    if isinstance(item, tuple) and item[0] == "sleep_for":
        time.sleep(item[1])
        return item[1]
    return item * 2


def scaled(x, factor):
    return x * factor


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(work, workers=2, timeout_s=TIMEOUT, memory_mb=512) as p:
        yield p


def test_results_keep_order_and_pool_is_reused(pool):
    assert pool.map(range(50)) == [2 * i for i in range(50)]
    pids = set(pool.worker_pids)
    assert pool.map([5, 6]) == [10, 12]
    assert set(pool.worker_pids) == pids  # no new workers for a second call
    assert pool.map([]) == []


@pytest.mark.parametrize("hang", ["sleep", "cpow", "regex"])
def test_hang_becomes_timeout_within_bound(pool, hang):
    start = time.monotonic()
    out = pool.map([1, hang, 2])
    elapsed = time.monotonic() - start
    assert out[0] == 2 and out[2] == 4
    assert isinstance(out[1], Failure) and out[1].kind == "timeout", out[1]
    assert elapsed < TIMEOUT + MARGIN, f"{hang} took {elapsed:.2f}s"
    assert pool.map([3]) == [6]  # the pool keeps working after the kill


def test_timeouts_in_one_chunk_do_not_starve_the_rest(pool):
    # chunk_size 4 on 2 workers: each chunk holds one hang; the items after it still run
    items = ["sleep", 1, 2, 3, "regex", 4, 5, 6]
    p = WorkerPool(work, workers=2, timeout_s=TIMEOUT, memory_mb=512, chunk_size=4)
    try:
        start = time.monotonic()
        out = p.map(items)
        elapsed = time.monotonic() - start
    finally:
        p.close()
    assert [o.kind if isinstance(o, Failure) else o for o in out] == [
        "timeout", 2, 4, 6, "timeout", 8, 10, 12]
    assert elapsed < TIMEOUT + MARGIN + 1.0  # both hangs run in parallel, plus restarts


def test_unbounded_allocation_in_c_is_stopped(pool):
    start = time.monotonic()
    out = pool.map(["bigpow", "alloc", 7])
    assert time.monotonic() - start < TIMEOUT * 2 + MARGIN
    for failure in out[:2]:
        # the memory bound turns these into MemoryError (or a timeout where the
        # multiplication is still under the bound when the clock runs out)
        assert isinstance(failure, Failure), failure
        assert failure.kind == "timeout" or "MemoryError" in failure.cause, failure
    assert "MemoryError" in out[1].cause
    assert out[2] == 14


def test_errors_and_crashes_become_failures_with_their_cause(pool):
    out = pool.map([1, "raise", "exit", "unpicklable", 2])
    assert out[0] == 2 and out[4] == 4
    assert out[1] == Failure("error", "ValueError: bad item 'raise'")
    assert out[2].kind == "error" and "exit code 3" in out[2].cause
    assert out[3].kind == "error" and "not picklable" in out[3].cause
    assert pool.stats.errors >= 3


def test_deadline_is_per_item_not_per_chunk():
    # five items of 0.4 s each in one chunk: 2 s in all, but each is within 1 s
    p = WorkerPool(work, workers=1, timeout_s=1.0, memory_mb=512, chunk_size=5)
    try:
        assert p.map([("sleep_for", 0.4)] * 5) == [0.4] * 5
    finally:
        p.close()


def test_partial_functions_and_close():
    p = WorkerPool(functools.partial(scaled, factor=3), workers=1, timeout_s=5)
    assert p.map([1, 2]) == [3, 6]
    pids = p.worker_pids
    p.close()
    for pid in pids:
        # the worker is gone: either reaped, or at worst a zombie of ours
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/status") as f:
                assert "zombie" in f.read()
        except (ProcessLookupError, FileNotFoundError):
            pass
    with pytest.raises(RuntimeError, match="after close"):
        p.map([1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(work, workers=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        WorkerPool(work, timeout_s=0)
    with pytest.raises(ValueError, match="fork is unsafe"):
        WorkerPool(work, context="fork")
    with pytest.raises(ValueError, match="memory_mb"):
        WorkerPool(work, memory_mb=1)
    assert WorkerPool(work, workers=0).num_workers == default_workers()


def test_a_small_batch_starts_one_worker_and_a_large_one_grows_the_pool():
    p = WorkerPool(work, workers=2, timeout_s=5, memory_mb=512)
    try:
        assert p.map(range(20)) == [2 * i for i in range(20)]
        assert p.stats.workers_started == 1  # quick items: one worker did them all
        # four items of 0.5 s, still queued 50 ms after the worker became ready: a second one
        start = time.monotonic()
        assert p.map([("sleep_for", 0.5)] * 4) == [0.5] * 4
        assert p.stats.workers_started == 2
        assert time.monotonic() - start < 1.9  # in parallel, not 2 s in a row
    finally:
        p.close()


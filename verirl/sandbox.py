"""A pool of worker processes with a hard per-item time bound and a memory bound.

Untrusted work (parsing and comparing model output with sympy) can hang inside C code
where no Python-level timeout fires (a giant integer power, a regex, a sympy routine),
or allocate without limit. :class:`WorkerPool` runs such work in separate processes:

- each item's time is bounded: when an item runs past ``timeout_s`` its worker is
  killed with SIGKILL and replaced, the item gets ``Failure("timeout", ...)``, and the
  remaining items go on;
- each worker's address space is bounded with ``RLIMIT_AS`` (``memory_mb`` more than it
  had when it started), so a hostile input gets a ``MemoryError`` (reported as
  ``Failure("error", ...)``) instead of taking the machine;
- a worker that dies (segfault, ``os._exit``) turns its current item into
  ``Failure("error", ...)`` and is replaced.

Workers are started from the ``forkserver`` context (``spawn`` also works): the caller
is typically the trainer, which holds torch threads and must not be forked. Items are
sent to a worker in chunks (one message per chunk, one message back per item); the
deadline of an item counts from when the previous result of the same worker arrived
(or from when the chunk was sent), so the bound is per item, not per chunk.

Start-up is what a small batch pays: the first worker waits for the forkserver, a new
interpreter that imports the ``preload`` modules (sympy for ``math_answer``: 0.3 s on a
quiet core, up to a second on a busy one), and every worker forks from it with them
imported. A batch starts one worker, and more only when work is still queued
``GROW_AFTER_S`` after the last one became ready, so a small batch is done by one.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from verirl.verifier import Failure

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MEMORY_MB = 3072
# a batch waits this long on the workers it has before starting more: a small batch
# (sympy pairs take about a millisecond each) is done by one worker, and a large one
# grows the pool after 50 ms
GROW_AFTER_S = 0.05
_CAUSE_LIMIT = 500  # characters of an exception message kept in a Failure's cause


def default_workers() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _short(text: str) -> str:
    # causes end up in logs and JSON: keep them short and ASCII-safe (inputs may hold
    # NUL bytes or lone surrogates)
    text = ascii(text)[1:-1] if not text.isascii() else text
    return text if len(text) <= _CAUSE_LIMIT else text[:_CAUSE_LIMIT] + "..."


def _address_space_bytes() -> int | None:
    """This process's current virtual memory size, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _limit_memory(memory_mb: int | None) -> None:
    """Cap the address space at (current size + ``memory_mb``): relative to the start
    size because a worker inherits whatever its parent imported (torch maps gigabytes of
    virtual memory it never touches), and an absolute cap below that would make every
    allocation fail."""
    if memory_mb is None:
        return
    import resource

    base = _address_space_bytes() or 0
    limit = base + memory_mb * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(conn: Connection, fn: Callable[[Any], Any], memory_mb: int | None) -> None:
    """A worker's loop: receive ``(start, items)`` chunks, send ``("ok"|"error", index,
    payload)`` for each item in order; exit on ``None`` or when the parent goes away."""
    # Ctrl-C in the terminal reaches the whole process group; the parent decides what
    # happens to workers, so they ignore it instead of printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(memory_mb)
    conn.send(("ready", os.getpid(), None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent closed the pipe or died: nothing left to do
            return
        if msg is None:
            return
        start, items = msg
        for offset, item in enumerate(items):
            index = start + offset
            try:
                reply = ("ok", index, fn(item))
            except MemoryError as exc:
                reply = ("error", index, _short(f"MemoryError: {exc}"))
            except RecursionError as exc:
                reply = ("error", index, _short(f"RecursionError: {exc}"))
            except Exception as exc:  # the item's failure is reported, the worker goes on
                reply = ("error", index, _short(f"{type(exc).__name__}: {exc}"))
            try:
                conn.send(reply)
            except (EOFError, OSError, BrokenPipeError):
                return
            except Exception as exc:  # the result could not be pickled: report that instead
                conn.send(("error", index, _short(f"result not picklable: {type(exc).__name__}: {exc}")))


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    started_at: float
    ready: bool = False
    # indices of the items sent and not yet answered, in the order the worker runs them
    pending: deque = field(default_factory=deque)
    deadline: float = math.inf

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


@dataclass
class PoolStats:
    """Counters over the pool's life: items run, timeouts, errors, workers started/killed."""

    items: int = 0
    timeouts: int = 0
    errors: int = 0
    workers_started: int = 0
    workers_killed: int = 0
    worker_deaths: int = 0


def _shutdown(workers: dict[int, _Worker]) -> None:
    """Kill every worker (used at close and at interpreter exit; must not reference the pool)."""
    for worker in list(workers.values()):
        try:
            worker.conn.send(None)
        except (OSError, EOFError, BrokenPipeError, ValueError):
            pass  # already gone: the kill below is what matters
        worker.proc.join(timeout=0.2)
        worker.kill()
    workers.clear()


class WorkerPool(Generic[T, R]):
    """Maps a picklable top-level function over items in worker processes, with a hard
    per-item time bound and a per-worker memory bound.

    ``map(items)`` returns one entry per item, in order: ``fn(item)``, or
    ``Failure("timeout", cause)`` when the item ran past ``timeout_s`` seconds (its worker
    is SIGKILLed and replaced), or ``Failure("error", cause)`` when ``fn`` raised (cause:
    the exception's type and message; ``MemoryError`` when the worker hit its memory
    bound) or the worker died.

    Args:
        fn: a picklable callable (a module-level function or a ``functools.partial`` of
            one); it runs in the workers, never in the caller.
        workers: number of worker processes; 0 means one per available core.
        timeout_s: the time bound of one item, in seconds.
        memory_mb: address space a worker may add to what it had at start (MiB);
            ``None``: unbounded.
        context: ``"forkserver"`` (default) or ``"spawn"``; never ``"fork"``, which is
            unsafe in a process that holds threads (torch).
        chunk_size: items sent to a worker at once; ``None`` picks one from the batch size.
        start_timeout_s: how long a new worker may take to import ``fn`` and report ready.
        preload: modules the forkserver imports once, so that new workers (including
            replacements for killed ones) start without importing them again (this
            module is always among them). Only effective if the forkserver has not
            started yet in this process.

    Workers start lazily on the first ``map``, one at first and more while work stays
    queued (``GROW_AFTER_S``), up to ``workers``; they are reused across calls and are
    killed by :meth:`close`, on context exit, or at interpreter exit. ``map`` may be
    called from several threads; calls run one at a time.
    """

    def __init__(
        self,
        fn: Callable[[T], R],
        *,
        workers: int = 0,
        timeout_s: float = 2.0,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        context: str = "forkserver",
        chunk_size: int | None = None,
        start_timeout_s: float = 60.0,
        preload: Sequence[str] = (),
    ) -> None:
        if not callable(fn):
            raise TypeError(f"WorkerPool fn must be callable, got {type(fn).__name__}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"WorkerPool workers must be an int >= 0 (0 = all cores), got {workers!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"WorkerPool timeout_s must be a number > 0, got {timeout_s!r}")
        if memory_mb is not None and (not isinstance(memory_mb, int) or memory_mb < 16):
            raise ValueError(f"WorkerPool memory_mb must be an int >= 16 or None, got {memory_mb!r}")
        if context not in ("forkserver", "spawn"):
            raise ValueError(
                f"WorkerPool context must be 'forkserver' or 'spawn' (fork is unsafe with "
                f"threads), got {context!r}"
            )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"WorkerPool chunk_size must be an int >= 1 or None, got {chunk_size!r}")
        self.fn = fn
        self.num_workers = workers or default_workers()
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.chunk_size = chunk_size
        self.start_timeout_s = float(start_timeout_s)
        self.stats = PoolStats()
        self._ctx = multiprocessing.get_context(context)
        self._preload = [__name__, *preload]
        self._grow_at = 0.0  # monotonic time from which a map may start more workers
        self._workers: dict[int, _Worker] = {}  # keyed by id(conn)
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "WorkerPool[T, R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers; the pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers.values() if w.proc.pid is not None]

    def _start_worker(self) -> _Worker:
        if self._preload and self._ctx.get_start_method() == "forkserver":
            # set before the forkserver's first start; a no-op once it runs
            self._ctx.set_forkserver_preload(["__main__", *self._preload])
            self._preload = []
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self.fn, self.memory_mb),
            name="verirl-sandbox-worker",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # so that the worker's death shows up as EOF on our end
        worker = _Worker(proc, parent_conn, time.monotonic())
        worker.deadline = worker.started_at + self.start_timeout_s
        self._workers[id(parent_conn)] = worker
        self.stats.workers_started += 1
        return worker

    def _retire(self, worker: _Worker, killed: bool) -> None:
        self._workers.pop(id(worker.conn), None)
        worker.kill()
        if killed:
            self.stats.workers_killed += 1
        else:
            self.stats.worker_deaths += 1

    # ---- mapping ---------------------------------------------------------------------
    def map(self, items: Iterable[T]) -> list[R | Failure]:
        """``[fn(item) or Failure, ...]`` in the order of ``items``."""
        items = list(items)
        with self._lock:
            if self._closed:
                raise RuntimeError("WorkerPool.map called after close()")
            if not items:
                return []
            try:
                return self._map(items)
            except BaseException:
                # interrupted mid-batch (Ctrl-C): the busy workers hold stale work
                for worker in list(self._workers.values()):
                    if worker.pending:
                        self._retire(worker, killed=True)
                raise

    def _chunk(self, n: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        # about four chunks per worker balances load; 32 keeps a lost chunk cheap
        return max(1, min(32, math.ceil(n / (self.num_workers * 4))))

    def _map(self, items: list[T]) -> list[R | Failure]:
        batch = _Batch(items, self._chunk(len(items)))
        self.stats.items += len(items)
        # the workers this pool already has get GROW_AFTER_S before more are started
        self._grow_at = time.monotonic() + GROW_AFTER_S if self._workers else 0.0
        while batch.remaining:
            self._dispatch(batch)
            if not self._workers:
                raise RuntimeError("WorkerPool has work queued but no worker could be started")
            next_deadline = min(w.deadline for w in self._workers.values())
            if self._may_grow(batch):
                next_deadline = min(next_deadline, self._grow_at)
            ready_conns = wait([w.conn for w in self._workers.values()],
                               timeout=max(0.0, next_deadline - time.monotonic()))
            for conn in ready_conns:
                worker = self._workers.get(id(conn))
                if worker is not None:
                    self._drain(worker, batch)
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if now >= worker.deadline:
                    self._expire(worker, batch, now)
        return batch.results

    def _dispatch(self, batch: "_Batch") -> None:
        """Send queued chunks to idle ready workers; start workers for the rest."""
        for worker in list(self._workers.values()):
            if not (worker.ready and not worker.pending and batch.queue):
                continue
            start, count = batch.queue.popleft()
            try:
                worker.conn.send((start, batch.items[start:start + count]))
            except (OSError, EOFError):  # BrokenPipeError included: it died while idle
                batch.queue.appendleft((start, count))
                self._retire(worker, killed=False)
                continue
            except Exception as exc:  # an item could not be pickled
                cause = _short(f"item not picklable: {type(exc).__name__}: {exc}")
                for i in range(start, start + count):
                    self._fail(batch, i, Failure("error", cause))
                continue
            worker.pending.extend(range(start, start + count))
            worker.deadline = time.monotonic() + self.timeout_s
        if not self._may_grow(batch):
            return
        if not self._workers:
            self._start_worker()  # one first: a small batch needs no more
        elif time.monotonic() >= self._grow_at:
            # work still queued GROW_AFTER_S after the last worker became ready: a large
            # batch (or a worker was lost), so as many as there are chunks and room for
            for _ in range(min(len(batch.queue), self.num_workers - len(self._workers))):
                self._start_worker()

    def _may_grow(self, batch: "_Batch") -> bool:
        """Work is queued, there is room for a worker, and none is starting."""
        return (bool(batch.queue) and len(self._workers) < self.num_workers
                and all(w.ready for w in self._workers.values()))

    def _fail(self, batch: "_Batch", index: int, failure: Failure) -> None:
        if batch.finish(index, failure):
            if failure.kind == "timeout":
                self.stats.timeouts += 1
            else:
                self.stats.errors += 1

    def _fail_start(self, batch: "_Batch", cause: str) -> None:
        # a worker that cannot start would fail every attempt the same way: give up on
        # one queued chunk per failed start, so the call ends instead of looping
        log.warning("sandbox worker failed to start: %s", cause)
        if batch.queue:
            start, count = batch.queue.popleft()
            for i in range(start, start + count):
                self._fail(batch, i, Failure("error", f"sandbox worker failed to start: {cause}"))

    def _expire(self, worker: _Worker, batch: "_Batch", now: float) -> None:
        """Handle a worker past its deadline: a result may have just arrived; if not,
        the item it is running times out and the worker is killed."""
        if worker.conn.poll(0):
            self._drain(worker, batch)
            if id(worker.conn) not in self._workers or now < worker.deadline:
                return
        if not worker.ready:
            self._retire(worker, killed=True)
            self._fail_start(batch, f"not ready within {self.start_timeout_s:g} s")
            return
        if not worker.pending:
            worker.deadline = math.inf
            return
        index = worker.pending.popleft()
        self._fail(batch, index, Failure(
            "timeout", f"item ran past the {self.timeout_s:g} s bound; worker killed"))
        batch.requeue(worker)
        self._retire(worker, killed=True)

    def _drain(self, worker: _Worker, batch: "_Batch") -> None:
        """Read every message the worker has sent so far."""
        while id(worker.conn) in self._workers:
            try:
                if not worker.conn.poll(0):
                    return
                tag, index, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._on_death(worker, batch)
                return
            except Exception as exc:  # a result that does not unpickle in this process
                if not worker.pending:
                    raise RuntimeError(f"sandbox worker sent an unreadable message: {exc}") from exc
                index = worker.pending.popleft()
                self._fail(batch, index, Failure(
                    "error", _short(f"result not readable: {type(exc).__name__}: {exc}")))
                worker.deadline = time.monotonic() + self.timeout_s if worker.pending else math.inf
                continue
            if tag == "ready":
                worker.ready = True
                worker.deadline = math.inf
                self._grow_at = time.monotonic() + GROW_AFTER_S
                continue
            if worker.pending and worker.pending[0] == index:
                worker.pending.popleft()
            if tag == "ok":
                batch.finish(index, payload)
            else:
                self._fail(batch, index, Failure("error", payload))
            worker.deadline = time.monotonic() + self.timeout_s if worker.pending else math.inf

    def _on_death(self, worker: _Worker, batch: "_Batch") -> None:
        worker.proc.join(timeout=5)
        code = worker.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        was_ready = worker.ready
        if worker.pending:
            index = worker.pending.popleft()
            self._fail(batch, index, Failure("error", f"sandbox worker died while running this item ({how})"))
            batch.requeue(worker)
        self._retire(worker, killed=False)
        if not was_ready:
            self._fail_start(batch, f"worker died before it was ready ({how})")


class _Batch:
    """The state of one ``map`` call: results so far and the chunks still to send."""

    _MISSING = object()

    def __init__(self, items: list, chunk: int) -> None:
        self.items = items
        self.results: list[Any] = [self._MISSING] * len(items)
        self.remaining = len(items)
        # (start index, count) ranges of consecutive items not yet sent
        self.queue: deque[tuple[int, int]] = deque(
            (s, min(chunk, len(items) - s)) for s in range(0, len(items), chunk)
        )

    def finish(self, index: int, value: Any) -> bool:
        if self.results[index] is not self._MISSING:
            return False
        self.results[index] = value
        self.remaining -= 1
        return True

    def requeue(self, worker: _Worker) -> None:
        """The items a failed worker had not reached go back to the front, in order."""
        rest = list(worker.pending)
        worker.pending.clear()
        if rest:
            self.queue.appendleft((rest[0], len(rest)))

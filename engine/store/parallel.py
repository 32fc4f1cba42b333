"""Spread CPU-bound, read-only work over all cores with forked workers.

Threads do not help Python-level parsing (the GIL), and a worker thread that releases the GIL
for every Ed25519 check waits a whole switch interval to get it back, so verification of a
large ledger runs in forked children instead: each inherits the parsed state copy-on-write,
works on its own share, and pipes back a pickled result. Results come back in order, so the
output is the same as a serial run's. Where ``fork`` is missing, the work is small, or there
is one core, everything runs in this process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Background", "background", "cpu_count", "fork_map"]

MIN_PER_WORKER = 256  # items below which another process costs more than it saves
T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _child(fn: Callable[[], object], r: int, w: int) -> None:
    """Run in a forked child: never returns into the caller's stack."""
    code = 0
    try:
        os.close(r)
        try:
            payload = pickle.dumps((True, fn()), pickle.HIGHEST_PROTOCOL)
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                payload = pickle.dumps((False, e), pickle.HIGHEST_PROTOCOL)
                pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
            except Exception:  # noqa: BLE001 - one that does not round-trip still says what it was
                payload = pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}")), pickle.HIGHEST_PROTOCOL)
        with os.fdopen(w, "wb") as out:
            out.write(payload)
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


class Background(Generic[R]):
    """A call running in a forked child; :meth:`result` waits for it (or, with ``fork=False`` or
    no ``os.fork``, runs it then, here)."""

    def __init__(self, fn: Callable[[], R], *, fork: bool = True) -> None:
        self._fn: Callable[[], R] | None = fn
        self._pid = self._fd = -1
        if fork and hasattr(os, "fork"):
            gc.freeze()  # what the child inherits stays out of its collections: no copy-on-write storm
            try:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    _child(fn, r, w)
                os.close(w)
                self._pid, self._fd, self._fn = pid, r, None
            finally:
                gc.unfreeze()

    def result(self) -> R:
        if self._fn is not None:
            return self._fn()
        pid, fd, self._pid, self._fd = self._pid, self._fd, -1, -1
        if pid < 0:
            raise RuntimeError("result() already taken")
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        finally:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"worker process {pid} died without a result")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if its result is no longer wanted (or on an error)."""
        pid, fd, self._pid, self._fd = self._pid, self._fd, -1, -1
        if pid > 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
                os.waitpid(pid, 0)


def background(fn: Callable[[], R]) -> Background[R]:
    """``fn`` in a forked child when there is a second core to run it on, else later, here."""
    return Background(fn, fork=cpu_count() > 1)


def fork_map(fn: Callable[[Sequence[T]], R], items: Sequence[T], *, min_per_worker: int | None = None,
             workers: int | None = None) -> list[R]:
    """``[fn(s) for s in slices(items)]``, the contiguous slices worked on at once in forked children.

    ``fn`` must only read shared state; what it returns must pickle. An exception in a child
    is raised here, as it would have been in a serial run.
    """
    least = MIN_PER_WORKER if min_per_worker is None else min_per_worker
    workers = min(workers or cpu_count(), max(1, len(items) // max(1, least)))
    if workers <= 1:
        return [fn(items)]
    size = -(-len(items) // workers)
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    jobs: list[Background[R]] = []
    try:
        for part in parts[1:]:
            jobs.append(Background(lambda part=part: fn(part)))
        first = fn(parts[0])
        return [first, *(job.result() for job in jobs)]
    finally:
        for job in jobs:
            job.cancel()

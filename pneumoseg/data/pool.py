"""Worker processes for prepare: a forkserver pool that dies with its parent, fed chunk by chunk.

Workers come from a ``forkserver`` (``spawn`` on Windows), which imports ``__main__``: a script
calling prepare with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import cv2

__all__ = ["Workers", "chunks", "run_chunks"]

_WATCH_INTERVAL_S = 0.5


def _die_with(parent_pid: int) -> None:
    """Exit this worker as soon as ``parent_pid`` (the process running prepare) has gone.

    A forkserver's worker is the child of the forkserver, not of prepare, and it blocks on a
    queue that never closes: without this a ``kill -9`` of prepare leaves the workers and the
    forkserver alive for ever (the forkserver exits once no worker holds its pipe). Linux: a
    pidfd that becomes readable when the parent exits; other POSIX systems: poll its pid every
    0.5 s. PR_SET_PDEATHSIG (Linux) also ends the worker if the forkserver dies.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # prctl(PR_SET_PDEATHSIG, SIGKILL)
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.name != "posix":
        return  # no pidfd, and os.kill(pid, 0) would send CTRL_C_EVENT on Windows
    try:
        fd = os.pidfd_open(parent_pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        fd = -1

    def watch() -> None:
        if fd >= 0:
            select.select([fd], [], [])  # readable once the process has exited
        else:
            while True:
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
                time.sleep(_WATCH_INTERVAL_S)
        os._exit(1)

    threading.Thread(target=watch, name="pneumoseg-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    cv2.setNumThreads(1)  # one process per core; no nested thread pools
    _die_with(parent_pid)


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Workers:
    """Worker processes, started on first use (a rerun with nothing to do starts none).

    Forked from a ``forkserver``, not plain ``fork``: forking a process whose native thread pools
    (OpenCV, OpenMP) hold locks deadlocks the child. The server imports this module, ``preload``
    (the modules of the work functions) and ``__main__`` once; each worker is then a cheap fork of
    it. ``spawn`` where there is no forkserver (Windows). Each worker exits when this process dies
    (``_die_with``).
    """

    def __init__(self, workers: int, n_max: int, preload: tuple[str, ...] = ()) -> None:
        self.n = max(1, min(workers, n_max))  # never more processes than files
        self.preload = [__name__, *preload]  # imported once by the forkserver
        self._pool: ProcessPoolExecutor | None = None

    def pool(self, n_items: int) -> ProcessPoolExecutor | None:
        """The pool, or None when one process will do (one worker, or at most one item)."""
        if self._pool is None and self.n > 1 and n_items > 1:
            ctx: Any
            if "forkserver" in mp.get_all_start_methods():
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(self.preload)
            else:
                ctx = mp.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_worker_init,
                                             initargs=(os.getpid(),))
        return self._pool if n_items > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def run_chunks(fn: Callable[..., list[Any]], chunks: Iterator[list[Any]], args: tuple[Any, ...],
                pool: ProcessPoolExecutor | None, in_flight: int,
                on_done: Callable[[int], None]) -> Iterator[Any]:
    """``fn(chunk, *args)`` for each chunk, in ``pool`` (or here if None); yield results as chunks finish.

    At most ``in_flight`` chunks are queued at a time: the queue never holds the whole list.
    """
    if pool is None:
        for part in chunks:
            yield from fn(part, *args)
            on_done(len(part))
        return
    running: dict[Future[list[Any]], int] = {}
    try:
        while True:
            while len(running) < in_flight and (part := next(chunks, [])):  # chunks are never empty
                running[pool.submit(fn, part, *args)] = len(part)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                n = running.pop(fut)
                yield from fut.result()
                on_done(n)
    except BaseException:
        for fut in running:
            fut.cancel()
        raise

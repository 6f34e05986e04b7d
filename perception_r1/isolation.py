"""A small process pool with a hard per-task time limit.

``concurrent.futures.ProcessPoolExecutor`` cannot kill one stuck task without breaking the whole pool, and
math-verify's SIGALRM timeouts do nothing off the main thread. Here every worker is its own process driven by a
parent-side thread: a task that overruns its limit gets its process killed and replaced, and only that task
reports :data:`TIMED_OUT`; other tasks, and their scores, are untouched.

The clock covers the call only. A fresh worker (at start, or after a kill) first imports the module of the function
it is about to run and calls that module's ``warm_worker()`` if it has one (math-verify builds its parsers there),
untimed: slow imports on a loaded machine must not make a legitimate check, run right after a kill, time out.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT: Any = _TimedOut()
"""Result of a task killed at its time limit."""


_HEADER = struct.Struct("!Q")
STARTUP_TIMEOUT_S = 300.0
"""How long a fresh worker may take to start and warm up (not counted against any task's limit)."""
CLOSE_GRACE_S = 10.0
"""How long :meth:`HardTimeoutPool.close` lets a running task finish before it kills the worker."""


def _warm_module(module: str) -> None:
    """Worker side: import ``module`` and run its ``warm_worker()`` hook if it defines one."""
    from importlib import import_module

    # Without the default, a module lacking the hook would raise: an error reply, which _warm ignores (equivalent).
    hook = getattr(import_module(module), "warm_worker", None)  # pragma: no mutate
    if callable(hook):
        hook()


def _write_frame(fd: int, obj: Any) -> None:
    payload = pickle.dumps(obj)
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        # Equivalent on Linux, where a blocking pipe write returns only when every byte is written; the loop is for
        # the partial writes POSIX allows (a signal mid-write).
        view = view[written:]  # pragma: no mutate


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))  # pragma: no mutate (equivalent: a read size, any is correct)
        if not chunk:
            raise EOFError("worker pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> Any:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return pickle.loads(_read_exact(fd, size))


def worker_main() -> None:
    """Child entry point (``python -m perception_r1.isolation``): run pickled calls from stdin, answer on stdout.

    A plain subprocess rather than ``multiprocessing``: it never re-imports the parent's ``__main__`` (which
    breaks under ``python -`` or some launchers) and its main thread runs the calls, so SIGALRM works.
    """
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # stray prints from a task must not corrupt the frame stream
    while True:
        try:
            message = _read_frame(in_fd)
        except (EOFError, KeyboardInterrupt):
            return
        if message is None:
            return
        fn, args = message
        try:
            reply = ("ok", fn(*args))
        except BaseException as exc:  # report, never die on a task's error
            reply = ("error", f"{type(exc).__name__}: {exc}")  # pragma: no mutate (equivalent: any status but "ok")
        _write_frame(out_fd, reply)


class _Slot:
    """One worker process plus the parent thread that feeds it."""

    def __init__(self, pool: HardTimeoutPool) -> None:
        self.pool = pool
        self.process: subprocess.Popen | None = None
        self.warmed: set[str] = set()  # modules the current process has imported and warmed
        self.thread = threading.Thread(
            target=self._run,
            daemon=True,  # a program that never closes its pool still exits (then the atexit hook closes it)
            name="perception-r1-isolation",  # pragma: no mutate (a name for thread dumps)
        )
        self.thread.start()

    def _ensure_process(self) -> subprocess.Popen:
        if self.process is not None and self.process.poll() is None:
            return self.process
        self._stop_process()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "perception_r1.isolation"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # the frames go through the pipes' file descriptors, never through the file objects' buffers
        return self.process

    def _warm(self, process: subprocess.Popen, module: str) -> None:
        """Import (and warm) ``module`` in the worker, untimed; raises ``OSError`` if it never answers."""
        assert process.stdin is not None and process.stdout is not None  # pragma: no mutate (typing: pipes exist)
        _write_frame(process.stdin.fileno(), (_warm_module, (module,)))
        ready, _, _ = select.select([process.stdout.fileno()], [], [], STARTUP_TIMEOUT_S)
        if not ready:
            raise OSError(f"worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
        _read_frame(process.stdout.fileno())  # an import error shows up again, with context, on the real call
        self.warmed.add(module)

    def kill_process(self) -> None:
        """Kill the current worker, if any, from another thread (the slot's own thread then replaces it)."""
        process = self.process
        if process is not None:
            process.kill()

    def _stop_process(self) -> None:
        self.warmed = set()
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        process.wait(timeout=10)  # pragma: no mutate (equivalent: a killed process is reaped at once)

    def _run(self) -> None:
        while True:
            item = self.pool.tasks.get()
            if item is None:
                self._stop_process()
                return
            future, fn, args, timeout_s = item
            if future is None:  # a prewarm request: start the worker and warm module `args` now
                try:
                    process = self._ensure_process()
                    if args not in self.warmed:
                        self._warm(process, args)
                except (EOFError, OSError):
                    self._stop_process()
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                process = self._ensure_process()
                assert process.stdin is not None and process.stdout is not None  # pragma: no mutate (typing: pipes exist)
                module = getattr(fn, "__module__", None)
                if module and module not in self.warmed:
                    self._warm(process, module)
                _write_frame(process.stdin.fileno(), (fn, args))
                ready, _, _ = select.select([process.stdout.fileno()], [], [], timeout_s)
                if ready:
                    status, value = _read_frame(process.stdout.fileno())
                    if status == "ok":
                        future.set_result(value)
                    else:
                        future.set_exception(RuntimeError(value))
                else:
                    self.pool.timeouts += 1
                    self._stop_process()
                    future.set_result(TIMED_OUT)
            except (EOFError, OSError) as exc:  # the worker died (OOM killer, segfault, failed start)
                self._stop_process()
                future.set_exception(RuntimeError(f"isolated worker died: {exc}"))
            except BaseException as exc:  # e.g. an unpicklable argument
                future.set_exception(exc)


class HardTimeoutPool:
    """Run picklable module-level functions in ``workers`` processes, each call under a hard time limit.

    Worker processes are plain subprocesses (safe inside multi-threaded Ray actors), started on first use and
    replaced when killed. ``submit`` returns a :class:`concurrent.futures.Future`; wrap it with ``asyncio.wrap_future`` in
    async code.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or min(os.cpu_count() or 1, 8))
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.timeouts = 0
        self._slots = [_Slot(self) for _ in range(self.workers)]
        self._closed = False  # pragma: no mutate (equivalent: None is as false)
        _live_pools.add(self)

    def submit(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Future:
        """Queue ``fn(*args)``; the future resolves to its value, :data:`TIMED_OUT`, or an exception."""
        if self._closed:
            raise RuntimeError("pool is closed")
        future: Future = Future()
        self.tasks.put((future, fn, args, float(timeout_s)))
        return future

    def prewarm(self, module: str) -> None:
        """Start the workers and warm ``module`` in them in the background (so startup overlaps other work)."""
        if not self._closed:
            for _ in self._slots:
                self.tasks.put((None, None, module, None))

    def close(self) -> None:
        """Stop all workers (idempotent). A worker still busy with a task after :data:`CLOSE_GRACE_S` is killed (the
        task fails with "worker died"), so closing never waits out a long time limit or leaves a process behind."""
        if self._closed:
            return
        self._closed = True
        for _ in self._slots:
            self.tasks.put(None)
        for slot in self._slots:
            slot.thread.join(timeout=CLOSE_GRACE_S)
            if slot.thread.is_alive():
                slot.kill_process()  # its thread sees the pipe close, fails the task and then reads the stop request
                slot.thread.join(timeout=CLOSE_GRACE_S)  # pragma: no mutate (equivalent: it ends at once now)


_live_pools: weakref.WeakSet[HardTimeoutPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()


if __name__ == "__main__":
    # Run the importable module's function, not this ``__main__`` copy's: the tasks' pickled references and
    # tools that key on ``__module__`` (mutation testing maps ``perception_r1.isolation.worker_main``) see one module.
    from perception_r1.isolation import worker_main as _worker_main

    _worker_main()

"""Run pool-driving work so that Ctrl-C never lands inside concurrent.futures' locking.

A KeyboardInterrupt raised between a lock's acquire and the start of its ``with`` block leaves the lock
held, and concurrent.futures takes Python-level locks on every submit and result (a thread pool's
idle-worker semaphore, each future's condition, the ``queue.Queue`` of a process pool's work ids) that its
own threads need too: after a Ctrl-C there, the next submit, the workers or the cleanup's
``shutdown(wait=True)`` waited forever (reproduced for ``necoda_filter.read``: 1 hang in ~100 interrupted
reads; for ``necoda compress``: most interrupts at a submit). Python delivers signals to the main thread
only, so :func:`off_main_thread` runs the work in a persistent dispatcher thread while the main thread
waits on a bare lock, whose acquire an interrupt aborts without side effects. Used by ``read`` and by
``necoda compress`` / ``decompress``.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout


class Stopped(Exception):
    """The caller of an :func:`off_main_thread` job was interrupted: stop submitting and waiting."""


def check(stop) -> None:
    """Raise :class:`Stopped` once the ``stop`` flag (``[bool]``, or None: never) is set."""
    if stop is not None and stop[0]:
        raise Stopped


def result(f: Future, stop):
    """``f.result()``; with a ``stop`` flag (``[bool]``) polled every 0.1 s, raising Stopped once set."""
    if stop is None:
        return f.result()
    while True:
        try:
            return f.result(timeout=0.1)
        except FutureTimeout:
            if stop[0]:
                raise Stopped from None


_dispatch_thread: threading.Thread | None = None
_dispatch_queue: queue.SimpleQueue | None = None


def _after_fork_in_child() -> None:
    """A forked child has no copy of the dispatcher thread: it starts its own on first use."""
    global _dispatch_thread, _dispatch_queue
    _dispatch_thread = _dispatch_queue = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _dispatcher(q: queue.SimpleQueue) -> None:
    while True:
        job = q.get()
        if job is None:
            return
        job()


def _dispatch(job) -> None:
    """Run ``job()`` in the main thread's dispatcher thread (started on first use; main thread only, so
    jobs run one after the other, like the main thread's own calls). The queue is a C ``SimpleQueue``:
    its ``put`` takes no Python-level lock an interrupt could leave held."""
    global _dispatch_thread, _dispatch_queue
    if _dispatch_thread is None or not _dispatch_thread.is_alive():
        _dispatch_queue = queue.SimpleQueue()
        _dispatch_thread = threading.Thread(target=_dispatcher, args=(_dispatch_queue,), daemon=True,
                                            name="necoda-dispatch")
        _dispatch_thread.start()
    _dispatch_queue.put(job)


def holds_h5py_lock() -> bool:
    """Whether this thread holds h5py's global lock (inside a ``visititems`` callback, for one)."""
    try:
        from h5py import _objects

        return bool(_objects.phil._is_owned())
    except Exception:  # noqa: BLE001 — another h5py: assume not
        return False


def off_main_thread(fn):
    """``fn(stop)``, run so that Ctrl-C never lands inside the locking of the pools ``fn`` drives.

    In the main thread ``fn`` runs in the dispatcher thread while the main thread waits on a bare lock
    (except when it holds h5py's lock, in an h5py callback: the dispatcher could not use the file, so ``fn``
    runs in the caller). On an interrupt ``fn`` is told to stop (``stop[0] = True``; it should raise
    :class:`Stopped` at its next step — :func:`check`, :func:`result` — cancel what it queued and wait for
    what is running, so nothing writes into the caller's data after the caller regains control) and
    waited for; a second Ctrl-C during that wait returns at once. Other threads run ``fn`` directly
    (``stop`` is None)."""
    if threading.current_thread() is not threading.main_thread() or holds_h5py_lock():
        return fn(None)
    stop, finished, box = [False], [False], {}
    done = threading.Lock()  # a bare _thread.lock
    done.acquire()

    def helper():
        try:
            box["value"] = fn(stop)
        except BaseException as e:  # noqa: BLE001 — re-raised in the caller
            box["error"] = e
        finally:
            finished[0] = True
            done.release()

    _dispatch(helper)
    try:
        done.acquire()
    except BaseException:
        stop[0] = True
        while not finished[0]:  # (an interrupt just after the acquire succeeded: finished already)
            done.acquire(timeout=0.1)
        raise
    err = box.get("error")
    if err is not None:
        try:
            raise err
        finally:
            del err, box["error"]
    return box["value"]

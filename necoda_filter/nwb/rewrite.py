"""What compress and decompress share: copy a file object by object into an atomic output, with a
pool of workers (:func:`_rewrite_file`).

Called from the main thread, the copy (h5py and the worker pool) runs in a helper thread while the main
thread only waits (``mainthread.off_main_thread``): a Ctrl-C landing inside concurrent.futures' locking left
a lock held, and the cleanup then waited for it forever (see :func:`_rewrite_file`).
"""
from __future__ import annotations

from ..mainthread import check, off_main_thread
from .atomic import atomic_output, check_paths, open_input, sigterm_as_exit
from .copier import Copier, _copy_userblock, _create_file
from .workers import make_executor


def _rewrite_file(src_path, dst_path, overwrite, workers, handler) -> None:
    """What compress and decompress share: check the paths, copy ``src_path`` object by object into a
    temporary file renamed to ``dst_path`` at the end (userblock included), with a worker pool.
    ``handler(sds, dg, name, copier, executor, nworkers) -> bool`` writes a dataset itself (True) or
    leaves it to the plain copy (False).

    From the main thread the copy runs in a helper thread, and the main thread only waits on a bare lock:
    a KeyboardInterrupt raised between a lock's acquire and its ``with`` block leaves the lock held, and
    concurrent.futures takes Python-level locks on every submit (the mutex of its ``queue.Queue`` of work
    ids) and result (each future's condition) that its manager thread needs too, so the cleanup's
    ``executor.shutdown(wait=True)`` waited forever for that thread (and a Ctrl-C while the pool started
    left its workers running). On an interrupt (or SIGTERM/SIGHUP, whose handlers stay in the main
    thread) the helper is told to stop: it raises at its next chunk, future or object, removes the
    temporary, stops the workers, and the interrupt is re-raised; a second Ctrl-C returns at once (a
    temporary left then is removed by the next run). A Ctrl-C after OUT was renamed leaves OUT complete."""
    src_path, dst_path = check_paths(src_path, dst_path, overwrite)

    def run(stop):
        executor, nworkers = make_executor(workers)
        try:
            with atomic_output(dst_path, overwrite) as tmp:
                with open_input(src_path) as src:
                    ub = src.userblock_size
                    with _create_file(tmp, src) as dst:
                        copier = Copier(src, dst, lambda sds, dg, name: handler(sds, dg, name, copier, executor,
                                                                                nworkers), stop=stop)
                        copier.run()
                _copy_userblock(src_path, tmp, ub)
                check(stop)  # interrupted meanwhile: no OUT
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    with sigterm_as_exit():  # signal handlers can only be set in the main thread
        off_main_thread(run)

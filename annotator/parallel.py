"""Worker processes for cross-validation folds (joblib's loky pool), and stopping them.

loky keeps its workers for reuse after a `Parallel` call returns, idle for up to five minutes. A
command stopped meanwhile (Ctrl-C, SIGTERM, kill -9, a server's workers shut down) left them
behind, orphaned, holding its stdout and stderr open (so a pipe reading the command's output did
not end) and their memory (torch is loaded in each): they now leave within a second of their
parent (`_exit_with_parent`), and `stop_workers` ends them at once where the parent can still act.
"""

from __future__ import annotations

import os
import sys

PARENT_POLL_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """Run in each fold worker as it starts: a daemon thread ends the worker once its parent is gone
    (it is then re-parented, so its parent id changes). A watchdog rather than the kernel's
    parent-death signal, which fires when the *thread* that started the worker ends."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="annotator-parent-watch", daemon=True).start()


def _start_worker(parent: int, nice: int) -> None:
    """A fold worker's start: lower its priority by ``nice``, and leave with its parent."""
    if nice:
        os.nice(nice)
    _exit_with_parent(parent)


def lower_thread_priority(nice: int) -> None:
    """Run the calling thread at niceness ``nice`` at least (Linux schedules threads one by one, so a
    background thread yields the cores to the threads serving people); a no-op elsewhere."""
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), min(19, nice)))
    except (AttributeError, OSError):
        pass


def fold_runner(n_jobs: int, n_tasks: int, *, nice: int = 0, return_as: str = "list"):
    """A joblib ``Parallel`` for ``n_tasks`` independent fits: loky worker processes where more than
    one job is allowed (each leaving with this process, its priority lowered by ``nice`` for work in
    the background), in-process otherwise. ``return_as``: joblib's (``generator_unordered`` yields
    each result as it is done)."""
    from joblib import Parallel

    if n_jobs <= 1 or n_tasks <= 1:
        return Parallel(n_jobs=1, backend="sequential", return_as=return_as)
    return Parallel(n_jobs=min(n_jobs, n_tasks), backend="loky", initializer=_start_worker,
                    initargs=(os.getpid(), nice), return_as=return_as)


def stop_workers() -> None:
    """Kill the fold workers kept for reuse, if any; the next `fold_runner` starts fresh ones.
    Imports nothing: where joblib's pool was never loaded, no worker can be running."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)  # loky's public accessor would start a pool
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)

"""Worker processes for cross-validation folds (joblib's loky pool), and stopping them.

loky keeps its workers for reuse after a `Parallel` call returns, idle for up to five minutes. A
command stopped meanwhile (Ctrl-C, SIGTERM) left them behind, orphaned and holding its stdout and
stderr open, so a pipe reading the command's output did not end: `stop_workers` ends them.
"""

from __future__ import annotations

import sys


def fold_runner(n_jobs: int, n_tasks: int):
    """A joblib ``Parallel`` for ``n_tasks`` independent fits: loky worker processes where more than
    one job is allowed, in-process otherwise."""
    from joblib import Parallel

    return Parallel(n_jobs=min(n_jobs, n_tasks) or 1, backend="loky" if n_jobs > 1 else "sequential")


def stop_workers() -> None:
    """Kill the fold workers kept for reuse, if any; the next `fold_runner` starts fresh ones.
    Imports nothing: where joblib's pool was never loaded, no worker can be running."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)  # loky's public accessor would start a pool
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)

"""One table from library exceptions to a one-line message and an exit code; one clean way to stop."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from annotator.config import debug_enabled
from annotator.errors import (
    AnnotatorError,
    ConfigError,
    DatabaseOutOfDateError,
    NotAvailableError,
    NotFoundError,
)

EXIT_CODES: list[tuple[type[AnnotatorError], int]] = [
    (NotAvailableError, 2),
    (ConfigError, 2),
    (DatabaseOutOfDateError, 3),
    (NotFoundError, 4),
    (AnnotatorError, 1),
]


def exit_code_for(exc: AnnotatorError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def report(exc: AnnotatorError) -> int:
    """Print ``error: <message>`` on stderr and return the exit code (traceback with ANNOTATOR_DEBUG=1)."""
    if debug_enabled():
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    if not isinstance(exc, NotAvailableError):
        print("(set ANNOTATOR_DEBUG=1 for the traceback)", file=sys.stderr)
    return exit_code_for(exc)


@contextlib.contextmanager
def stop_cleanly() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the command, so its cleanup runs (a training run
    is marked interrupted, its labels stay pending; what `embed` cached stays cached); then the
    fold workers are stopped and one line, no traceback, says so, with exit code 128 + the signal.
    A SIGINT the parent shell ignores (a background job) stays ignored; the commands that serve
    (uvicorn, the demo) install their own handlers while they run."""
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        # typer turns a KeyboardInterrupt into a silent exit 130
        if not received and not isinstance(exc, KeyboardInterrupt):
            raise
        signum = received[0] if received else signal.SIGINT
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from annotator.parallel import stop_workers

        stop_workers()
        print(f"annotator: stopped by {signal.Signals(signum).name}; what was finished is kept, "
              "run the command again for the rest", file=sys.stderr)
        sys.exit(128 + signum)

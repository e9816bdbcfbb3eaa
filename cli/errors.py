"""One table from library exceptions to a one-line message and an exit code."""

from __future__ import annotations

import sys

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

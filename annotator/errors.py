"""The library's exceptions: one tree, so the CLI and the backend each map them in one table.

Every message names the thing that failed and what to do about it.
"""

from __future__ import annotations


class AnnotatorError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(AnnotatorError, ValueError):
    """A setting is missing or contradicts another."""


class DatabaseOutOfDateError(AnnotatorError):
    """The database schema is behind the code's migrations."""

    def __init__(self, url: str, current: str | None, head: str):
        self.url, self.current, self.head = url, current, head
        super().__init__(
            f"database {url} is at schema revision {current or 'none'} but this version of annotator "
            f"needs {head}; run `annotator db upgrade` to migrate it"
        )


class NotFoundError(AnnotatorError, LookupError):
    """A project, item or model version that was asked for does not exist."""


class InvalidItemError(AnnotatorError, ValueError):
    """One item's data is unusable; names the item and the reason."""

    def __init__(self, item_id: str, reason: str):
        self.item_id, self.reason = item_id, reason
        super().__init__(f"item {item_id!r}: {reason}")


class MediaError(AnnotatorError, ValueError):
    """Media bytes could not be fetched or are not what they claim to be."""

    def __init__(self, ref: str, reason: str):
        self.ref, self.reason = ref, reason
        super().__init__(f"{ref}: {reason}")


class UnauthenticatedError(AnnotatorError, PermissionError):
    """A request's credentials are missing or wrong (a webhook's secret)."""


class NotAllowedError(AnnotatorError, PermissionError):
    """The caller may not do this, however well-formed the request (an unauthenticated event)."""


class RequestTooLargeError(AnnotatorError, ValueError):
    """A request carries more than a limit allows (tasks per /predict)."""


class ValueTooLongError(AnnotatorError, ValueError):
    """A string is longer than the database column that would hold it (an annotator's id, a name)."""


class NotFittedError(AnnotatorError, ValueError, AttributeError):
    """An estimator was used before `fit`."""


class DimensionMismatchError(AnnotatorError, ValueError):
    """Vectors of the wrong width were given to an index or a head."""

    def __init__(self, what: str, expected: int, got: int):
        self.expected, self.got = expected, got
        super().__init__(f"{what}: expected vectors of dimension {expected}, got {got}")


class UnknownNameError(AnnotatorError, ValueError):
    """A head, strategy, encoder or modality name that does not exist."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


class NotEnoughLabelsError(AnnotatorError, ValueError):
    """Training or evaluation was asked for with too few labelled items."""


class NotAvailableError(AnnotatorError):
    """A capability that is not built yet, or whose optional dependency is missing."""


class TrainingInProgressError(AnnotatorError):
    """Another process is training this project right now."""

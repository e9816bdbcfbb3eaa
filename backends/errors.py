"""One table from library exceptions to HTTP status codes; bodies are JSON, never tracebacks."""

from __future__ import annotations

from annotator.errors import (
    AnnotatorError,
    ConfigError,
    DimensionMismatchError,
    MediaError,
    NotAvailableError,
    NotEnoughLabelsError,
    NotAllowedError,
    NotFoundError,
    RequestTooLargeError,
    UnauthenticatedError,
    UnknownNameError,
)

STATUS: list[tuple[type[AnnotatorError], int]] = [
    (UnauthenticatedError, 401),
    (NotAllowedError, 403),
    (NotFoundError, 404),
    (RequestTooLargeError, 413),
    (UnknownNameError, 422),
    (DimensionMismatchError, 422),
    (MediaError, 422),
    (NotEnoughLabelsError, 409),
    (NotAvailableError, 501),
    (ConfigError, 500),
    (AnnotatorError, 400),
]


def status_for(exc: AnnotatorError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))

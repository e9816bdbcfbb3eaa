"""Persistence: SQLAlchemy models, the engine/session factory, and repository functions."""

from annotator.store.session import Store, open_store

__all__ = ["Store", "open_store"]

"""Database schema. The database is the truth for items, labels, predictions and model versions;
artifacts on disk are referenced from here by path."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(ts: datetime) -> datetime:
    """Stored times come back naive (UTC) from SQLite and from columns without a zone."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Fixed class list (from a Label Studio config or `--labels`); None = open set, grows on import.
    classes: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    multilabel: Mapped[bool] = mapped_column(default=False)
    label_config: Mapped[str | None] = mapped_column(Text, default=None)
    ls_project_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # How Label Studio's /setup said to reach it (URL and access token), so every worker on every
    # host can fetch the project's media; never logged.
    ls_url: Mapped[str | None] = mapped_column(String(1000), default=None)
    ls_access_token: Mapped[str | None] = mapped_column(Text, default=None)
    # True when that access came through an authenticated path (`ls connect`, /setup behind basic
    # auth): only then is its address exempt from the media policy (`label_studio_settings`)
    ls_access_trusted: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The secret Label Studio's webhook sends in X-Annotator-Secret (set by `ls connect`); events
    # without it only ask for a pull from Label Studio's API, recorded in sync_requested_at.
    webhook_secret: Mapped[str | None] = mapped_column(String(200), default=None)
    sync_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    items: Mapped[list[Item]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Item(Base):
    """One task: references to its text/image/audio, and content hashes per modality."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    text_sha: Mapped[str | None] = mapped_column(String(64), default=None)
    image_sha: Mapped[str | None] = mapped_column(String(64), default=None)
    audio_sha: Mapped[str | None] = mapped_column(String(64), default=None)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    project: Mapped[Project] = relationship(back_populates="items")


class Label(Base):
    """A label given to an item: by a human (Label Studio, a manifest) or by a model.

    ``annotation_key`` makes upserts idempotent: ``ls:<annotation id>`` for Label Studio
    annotations, ``import:<item id>`` for manifest labels. Deletion is soft (``deleted_at``).
    """

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("project_id", "annotation_key"),
        Index("ix_labels_item_live", "item_id", "deleted_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    values: Mapped[list[Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(20))  # human | model
    annotation_key: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    # the classification control the label answers: None for the project's primary one (and for
    # manifest labels), else the control's name (its key is then ``ls:<annotation id>#<control>``)
    control: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(100))
    head: Mapped[str] = mapped_column(String(50))
    control: Mapped[str | None] = mapped_column(String(200), default=None)  # as Label.control
    status: Mapped[str] = mapped_column(String(20), default="candidate")  # candidate|active|retired|pruned
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_path: Mapped[str] = mapped_column(String(1000))
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(default=None)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_item_version", "item_id", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(100))
    label: Mapped[list[Any]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    modality_weights: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Transcript(Base):
    """A Whisper transcript of some audio, by content hash and model: shared by every project and
    worker, made once."""

    __tablename__ = "transcripts"
    __table_args__ = (UniqueConstraint("audio_sha", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    audio_sha: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    # running | succeeded | failed | skipped | interrupted | requested | handled; a background search: searched | search failed
    status: Mapped[str] = mapped_column(String(20), default="running")
    trigger: Mapped[str] = mapped_column(String(50), default="cli")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    model_version: Mapped[str | None] = mapped_column(String(100), default=None)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

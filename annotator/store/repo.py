"""Repository functions: every query the library makes, keyword-only, each taking a Session.

Callers never write SQL; bulk paths use executemany-style inserts so importing 10k items is one
round of statements, not 10k transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from annotator.config import check_project_name
from annotator.consensus import Annotation, consensus
from annotator.errors import NotFoundError
from annotator.store.models import Item, Label, ModelVersion, Prediction, Project, TrainingRun, Transcript, as_utc, utcnow



# --- projects -------------------------------------------------------------------------------

def get_project(session: Session, *, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        known = session.scalars(select(Project.name).order_by(Project.name)).all()
        hint = f"; known projects: {', '.join(known)}" if known else "; import items first"
        raise NotFoundError(f"no project named {name!r}{hint}")
    return project


def find_project(session: Session, *, name: str) -> Project | None:
    """The project, or None (`get_project` raises instead)."""
    return session.scalar(select(Project).where(Project.name == name))


def get_or_create_project(session: Session, *, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=check_project_name(name))
        session.add(project)
        session.flush()
    return project


# --- items ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemRecord:
    """What an import writes for one item."""

    external_id: str
    data: dict[str, Any]
    text_sha: str | None = None
    image_sha: str | None = None
    audio_sha: str | None = None
    ls_task_id: int | None = None


def upsert_items(session: Session, *, project: Project, records: Sequence[ItemRecord]) -> dict[str, int]:
    """Insert new items and update existing ones (matched by external id). Returns external id → pk."""
    existing = dict(
        session.execute(
            select(Item.external_id, Item.id).where(Item.project_id == project.id)
        ).all()
    )
    now = utcnow()
    new_rows, changed_rows = [], []
    for r in records:
        row = {
            "data": r.data, "text_sha": r.text_sha, "image_sha": r.image_sha,
            "audio_sha": r.audio_sha, "ls_task_id": r.ls_task_id, "updated_at": now,
        }
        if r.external_id in existing:
            changed_rows.append({"id": existing[r.external_id], **row})
        else:
            new_rows.append({"project_id": project.id, "external_id": r.external_id, "created_at": now, **row})
    if changed_rows:
        session.execute(update(Item), changed_rows)
    if new_rows:
        session.execute(insert(Item), new_rows)
        wanted = {r["external_id"] for r in new_rows}
        for ext, pk in session.execute(
            select(Item.external_id, Item.id).where(Item.project_id == project.id)
        ):
            if ext in wanted:
                existing[ext] = pk
    return existing


def list_items(session: Session, *, project: Project, external_ids: Iterable[str] | None = None) -> list[Item]:
    query = select(Item).where(Item.project_id == project.id).order_by(Item.id)
    if external_ids is not None:
        ids = list(external_ids)
        found = session.scalars(query.where(Item.external_id.in_(ids))).all()
        missing = set(ids) - {i.external_id for i in found}
        if missing:
            raise NotFoundError(
                f"project {project.name!r} has no item(s) {', '.join(sorted(missing)[:5])}"
            )
        return list(found)
    return list(session.scalars(query))


def external_ids(session: Session, *, project: Project) -> dict[int, str]:
    """Item primary key → external id, for every item of the project."""
    return dict(session.execute(select(Item.id, Item.external_id).where(Item.project_id == project.id)).all())


def task_items_missing(session: Session, *, project: Project, task_ids: Iterable[int],
                       created_before: datetime) -> list[str]:
    """External ids of items from Label Studio tasks not in ``task_ids``, created before ``created_before``."""
    listed = set(task_ids)
    rows = session.execute(select(Item.external_id, Item.ls_task_id, Item.created_at).where(
        Item.project_id == project.id, Item.ls_task_id.is_not(None)))
    return [ext for ext, tid, created in rows if tid not in listed and as_utc(created) < as_utc(created_before)]


def delete_items(session: Session, *, project: Project, external_ids: Iterable[str]) -> list[int]:
    """Delete items (with their labels and predictions); returns the primary keys removed."""
    from sqlalchemy import delete

    ids = list(external_ids)
    pks = list(session.scalars(select(Item.id).where(Item.project_id == project.id, Item.external_id.in_(ids))))
    if pks:
        session.execute(delete(Label).where(Label.item_id.in_(pks)))
        session.execute(delete(Prediction).where(Prediction.item_id.in_(pks)))
        session.execute(delete(Item).where(Item.id.in_(pks)))
    return pks


# --- labels ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelRecord:
    item_pk: int
    values: list[str]
    annotation_key: str
    source: str = "human"
    created_by: str | None = None
    control: str | None = None  # None: the primary control (`Label.control`)


def _of_control(column, control: str | None):
    """A filter on a ``control`` column: None is the primary control."""
    return column.is_(None) if control is None else column == control


def upsert_labels(session: Session, *, project: Project, records: Sequence[LabelRecord]) -> None:
    """Insert or update labels by annotation key; an update also revives a soft-deleted label.

    A record identical to what is stored (same item, values, source, author, not deleted) is left
    alone, so re-syncing or a repeated webhook does not make old labels look new to the trainer.
    """
    if not records:
        return
    keys = [r.annotation_key for r in records]
    existing: dict[str, tuple] = {}
    for chunk_start in range(0, len(keys), 500):
        chunk = keys[chunk_start:chunk_start + 500]
        for key, pk, item_id, values, source, created_by, control, deleted_at in session.execute(
                select(Label.annotation_key, Label.id, Label.item_id, Label.values, Label.source, Label.created_by,
                       Label.control, Label.deleted_at).where(Label.project_id == project.id,
                                                              Label.annotation_key.in_(chunk))):
            existing[key] = (pk, (item_id, list(values), source, created_by, control, deleted_at))
    now = utcnow()
    new_rows, changed_rows = [], []
    for r in records:
        row = {"item_id": r.item_pk, "values": list(r.values), "source": r.source,
               "created_by": r.created_by, "control": r.control, "updated_at": now, "deleted_at": None}
        if r.annotation_key in existing:
            pk, stored = existing[r.annotation_key]
            if stored != (r.item_pk, list(r.values), r.source, r.created_by, r.control, None):
                changed_rows.append({"id": pk, **row})
        else:
            new_rows.append({"project_id": project.id, "annotation_key": r.annotation_key,
                             "created_at": now, **row})
    if changed_rows:
        session.execute(update(Label), changed_rows)
    if new_rows:
        session.execute(insert(Label), new_rows)


def soft_delete_labels(session: Session, *, project: Project, annotation_keys: Iterable[str]) -> int:
    result = session.execute(
        update(Label)
        .where(Label.project_id == project.id, Label.annotation_key.in_(list(annotation_keys)),
               Label.deleted_at.is_(None))
        .values(deleted_at=utcnow())
    )
    return result.rowcount or 0


def live_annotation_keys(session: Session, *, project: Project, item_pks: Sequence[int], prefix: str = "",
                         updated_before: datetime | None = None) -> list[str]:
    """Annotation keys (starting with ``prefix``) of the live labels on these items; with
    ``updated_before``, only of those last written before then."""
    if not item_pks:
        return []
    query = select(Label.annotation_key).where(
        Label.project_id == project.id, Label.item_id.in_(list(item_pks)), Label.deleted_at.is_(None),
        Label.annotation_key.like(f"{prefix}%"))
    if updated_before is not None:
        query = query.where(Label.updated_at < updated_before)
    return list(session.scalars(query))


def live_annotations(session: Session, *, project: Project, source: str = "human",
                     control: str | None = None) -> list[Annotation]:
    """Every live label of ``source`` for ``control`` (None: the primary one) as an `Annotation`
    (annotator: who made it, else its key)."""
    rows = session.execute(
        select(Label.item_id, Label.values, Label.created_by, Label.annotation_key, Label.updated_at)
        .where(Label.project_id == project.id, Label.source == source, Label.deleted_at.is_(None),
               _of_control(Label.control, control))
        .order_by(Label.updated_at, Label.id)
    )
    return [Annotation(item_id, created_by or key, tuple(sorted(str(v) for v in values)), at)
            for item_id, values, created_by, key, at in rows]


def is_multilabel(project: Project, labels: dict[int, list[str]]) -> bool:
    """A multi-label project: its config says so, or some item carries several labels."""
    return bool(project.multilabel or any(len(v) > 1 for v in labels.values()))


def current_labels(session: Session, *, project: Project, source: str = "human",
                   control: str | None = None) -> dict[int, list[str]]:
    """Item pk → its label for ``control`` (None: the primary one): the consensus of its live labels
    of ``source`` (`annotator.consensus`: one annotation is its own consensus; several are voted on,
    or weighed by Dawid–Skene)."""
    return consensus(live_annotations(session, project=project, source=source, control=control))


def label_controls(session: Session, *, project: Project) -> list[str]:
    """The named (non-primary) controls the project has live human labels for."""
    return sorted(session.scalars(select(Label.control).distinct().where(
        Label.project_id == project.id, Label.control.is_not(None), Label.deleted_at.is_(None),
        Label.source == "human")))


# --- model versions and training runs --------------------------------------------------------

ALL_CONTROLS = "*"  # list_model_versions(control=ALL_CONTROLS): every control's versions


def list_model_versions(session: Session, *, project: Project, control: str | None = ALL_CONTROLS) -> list[ModelVersion]:
    """The project's model versions, oldest first: of every control, or of one (None: the primary)."""
    query = select(ModelVersion).where(ModelVersion.project_id == project.id)
    if control != ALL_CONTROLS:
        query = query.where(_of_control(ModelVersion.control, control))
    return list(session.scalars(query.order_by(ModelVersion.id)))


def active_model_version(session: Session, *, project: Project, control: str | None = None) -> ModelVersion | None:
    """The serving version of ``control`` (None: the primary one)."""
    return session.scalar(
        select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.status == "active",
                                   _of_control(ModelVersion.control, control))
    )


def get_model_version(session: Session, *, project: Project, version: str) -> ModelVersion:
    mv = session.scalar(
        select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.version == version)
    )
    if mv is None:
        raise NotFoundError(f"project {project.name!r} has no model version {version!r}")
    return mv


def promote_model_version(session: Session, *, project: Project, version: str) -> ModelVersion:
    """Make ``version`` the active one of its control; the previously active version of that control
    is retired (kept for rollback)."""
    target = get_model_version(session, project=project, version=version)
    if target.status == "pruned":
        raise NotFoundError(f"project {project.name!r}: version {version!r} was pruned (only the newest "
                            "ANNOTATOR_KEEP_VERSIONS are kept on disk); retrain instead")
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.project_id == project.id, ModelVersion.status == "active",
               ModelVersion.id != target.id, _of_control(ModelVersion.control, target.control))
        .values(status="retired")
    )
    target.status = "active"
    target.promoted_at = utcnow()
    return target


def start_training_run(session: Session, *, project: Project, trigger: str) -> TrainingRun:
    run = TrainingRun(project_id=project.id, trigger=trigger, status="running")
    session.add(run)
    session.flush()
    return run


# --- predictions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictionRecord:
    item_pk: int
    label: list[str]
    score: float
    model_version: str
    modality_weights: dict[str, float] | None = None


def add_predictions(session: Session, *, project: Project, records: Sequence[PredictionRecord]) -> None:
    if records:
        now = utcnow()
        session.execute(insert(Prediction), [
            {"project_id": project.id, "item_id": r.item_pk, "label": r.label, "score": r.score,
             "model_version": r.model_version, "modality_weights": r.modality_weights, "created_at": now}
            for r in records
        ])


# --- transcripts -----------------------------------------------------------------------------

def transcripts(session: Session, *, shas: Iterable[str], model: str) -> dict[str, str]:
    """Audio content hash → cached transcript by ``model``, for those that have one."""
    wanted, found = sorted(set(shas)), {}
    for start in range(0, len(wanted), 500):
        found.update(session.execute(select(Transcript.audio_sha, Transcript.text).where(
            Transcript.model == model, Transcript.audio_sha.in_(wanted[start:start + 500]))).all())
    return found


def add_transcripts(session: Session, *, model: str, texts: dict[str, str]) -> None:
    """Cache transcripts (audio content hash → text); ones already cached are left as they are."""
    new = {sha: text for sha, text in texts.items() if sha not in transcripts(session, shas=texts, model=model)}
    if new:
        now = utcnow()
        session.execute(insert(Transcript), [{"audio_sha": sha, "model": model, "text": text, "created_at": now}
                                             for sha, text in new.items()])


# --- training requests (backend) ---------------------------------------------------------------

FINISHED_RUNS = ("succeeded", "failed", "skipped")  # runs that consumed the labels before their start


def pending_labels(session: Session, *, project: Project) -> tuple[int, datetime | None]:
    """(human labels created/updated/deleted since the last *finished* training run started, newest
    change). An interrupted run (process killed) consumed nothing, so its labels stay pending."""
    from sqlalchemy import func

    last = session.scalar(select(func.max(TrainingRun.started_at)).where(
        TrainingRun.project_id == project.id, TrainingRun.status.in_(FINISHED_RUNS)))
    query = select(func.count(), func.max(Label.updated_at)).where(
        Label.project_id == project.id, Label.source == "human")
    if last is not None:
        query = query.where(Label.updated_at > last)
    count, newest = session.execute(query).one()
    return int(count or 0), newest


def last_training_start(session: Session, *, project: Project) -> datetime | None:
    from sqlalchemy import func

    return session.scalar(select(func.max(TrainingRun.started_at)).where(
        TrainingRun.project_id == project.id, TrainingRun.status.in_(FINISHED_RUNS)))


def request_training(session: Session, *, project: Project, trigger: str) -> None:
    """Ask the backend's trainer to retrain now (e.g. Label Studio's "Start Training")."""
    session.add(TrainingRun(project_id=project.id, trigger=trigger, status="requested"))


def take_training_requests(session: Session, *, project: Project) -> int:
    """Mark outstanding requests as handled; returns how many there were."""
    result = session.execute(update(TrainingRun).where(
        TrainingRun.project_id == project.id, TrainingRun.status == "requested").values(
        status="handled", finished_at=utcnow()))
    return result.rowcount or 0


def has_training_request(session: Session, *, project: Project) -> bool:
    return session.scalar(select(TrainingRun.id).where(
        TrainingRun.project_id == project.id, TrainingRun.status == "requested").limit(1)) is not None


def mark_interrupted_runs(session: Session, *, project: Project) -> int:
    """Runs left 'running' by a killed process become 'interrupted' (call only while holding the
    project's training lock, so no live run can be mistaken for a dead one)."""
    result = session.execute(update(TrainingRun).where(
        TrainingRun.project_id == project.id, TrainingRun.status == "running").values(
        status="interrupted", error="the process ended during training", finished_at=utcnow()))
    return result.rowcount or 0


def projects_to_sync(session: Session) -> list[Project]:
    """Projects an unauthenticated webhook asked to pull from Label Studio."""
    return list(session.scalars(select(Project).where(Project.sync_requested_at.is_not(None))))


def sync_done(session: Session, *, project: Project, requested_at: datetime) -> None:
    """Clear the sync request, unless another arrived after ``requested_at`` (then it stays)."""
    session.execute(update(Project).where(Project.id == project.id, Project.sync_requested_at <= requested_at)
                    .values(sync_requested_at=None))


def ls_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).where(Project.ls_project_id.is_not(None))))


def items_by_task_ids(session: Session, *, project: Project, task_ids: Iterable[int]) -> dict[int, Item]:
    ids = list(task_ids)
    return {it.ls_task_id: it for it in session.scalars(
        select(Item).where(Item.project_id == project.id, Item.ls_task_id.in_(ids)))}

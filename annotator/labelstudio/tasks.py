"""Label Studio tasks and annotations into the store: plain functions over a session.

Used by the backend (/setup, /predict, webhooks) and by ``annotator ls sync``; Label Studio's task
id is the item's external id. An annotation answers each classification control of the config
separately: its primary answer's key is ``ls:<annotation id>``, another control's
``ls:<annotation id>#<control>`` (`annotation_keys`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from annotator.config import Settings
from annotator.errors import AnnotatorError
from annotator.labelstudio.label_config import LabelConfig, parse_label_config
from annotator.media import sha256
from annotator.media_policy import MediaNotAllowedError, MediaPolicy
from annotator.store import repo
from annotator.store.models import Item, Project


log = logging.getLogger("annotator.labelstudio")


def project_name_for(ls_project_id: int) -> str:
    return f"ls-{ls_project_id}"


MAX_ID = 2**31 - 1  # Label Studio's ids are 32-bit integers, as are our columns holding them


def parse_id(value: Any, what: str = "task") -> int:
    """A Label Studio id (task, annotation) from a payload: a positive 32-bit integer, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AnnotatorError(f"cannot read a Label Studio {what} id from {value!r}")
    try:
        parsed = int(value)
    except ValueError:
        raise AnnotatorError(f"cannot read a Label Studio {what} id from {value!r}") from None
    if not 0 < parsed <= MAX_ID:
        raise AnnotatorError(f"Label Studio {what} id {value!r} is out of range")
    return parsed


def parse_project_id(value: Any) -> int:
    """Label Studio sends ``"<id>.<created timestamp>"`` (or an int); the id is before the dot."""
    return parse_id(str(value).split(".", 1)[0] if isinstance(value, (int, str)) else value, "project")


def ensure_project(session, ls_project_id: int, schema: str | None, config: LabelConfig | None) -> Project:
    """The store's project for a Label Studio project, created on first sight, its label config and
    classes kept up to date."""
    p = repo.get_or_create_project(session, name=project_name_for(ls_project_id))
    p.ls_project_id = ls_project_id
    if schema and p.label_config != schema:
        p.label_config = schema
    if config is not None and config.primary is not None:
        if p.classes != list(config.primary.values):
            p.classes = list(config.primary.values)
        p.multilabel = config.primary.multiple
    return p


def remember_access(project: Project, url: str | None, token: str | None, *, trusted: bool) -> bool:
    """Keep how to reach Label Studio (a complete pair), for every worker; returns whether it was kept.

    ``trusted``: the caller is authenticated (`ls connect`, /setup behind basic auth). Access stored
    by an untrusted /setup is not exempt from the media policy, and an untrusted caller never
    replaces access already stored: otherwise anyone reaching the backend could re-point a project
    at an internal address, with a token of their choosing."""
    if not (url and token):
        return False
    if (project.ls_url, project.ls_access_token) == (url, token):
        project.ls_access_trusted = project.ls_access_trusted or trusted
        return True
    if project.ls_access_token and not trusted:
        return False
    project.ls_url, project.ls_access_token, project.ls_access_trusted = url, token, trusted
    return True


def label_studio_settings(settings: Settings, project: Project) -> Settings:
    """Settings that reach the project's Label Studio: the configured URL and key where both are
    set, else what was stored for the project (a configured URL still wins over its hostname).

    Stored access that came from an unauthenticated /setup is used only where the media policy lets
    us reach its host (a public address, or one listed in ANNOTATOR_MEDIA_ALLOW_HOSTS), and its host
    is then not exempt from the policy; otherwise the project has no Label Studio access."""
    if settings.label_studio_url and settings.label_studio_api_key:
        return settings
    url = settings.label_studio_url or project.ls_url
    if not (project.ls_access_token and url):
        return settings
    trusted = project.ls_access_trusted or bool(settings.label_studio_url)
    if not trusted:
        try:
            MediaPolicy.from_settings(settings).check_host(url, ref=f"project {project.name}'s Label Studio")
        except (MediaNotAllowedError, OSError) as exc:
            log.warning("%s; it came from an unauthenticated /setup: configure ANNOTATOR_LABEL_STUDIO_URL, connect "
                        "the project with `annotator ls connect`, or turn on basic auth", exc)
            return settings
    return settings.with_label_studio(url, project.ls_access_token, trusted=trusted)


def project_config(project: Project) -> LabelConfig | None:
    return parse_label_config(project.label_config) if project.label_config else None


def upsert_tasks(session, project: Project, config: LabelConfig, tasks: list[dict]) -> dict[int, Item]:
    """Tasks → items (external id = task id), by task id. Unchanged tasks keep their content hashes
    (and a transcript adopted as their text, while their audio is the same)."""
    ids = []
    for t in tasks:
        if "id" not in t or not isinstance(t.get("data"), dict):
            raise AnnotatorError(f"task {t.get('id', '?')} has no id or no data object")
        ids.append(parse_id(t["id"]))
    existing = repo.items_by_task_ids(session, project=project, task_ids=ids)
    records = []
    for task_id, t in zip(ids, tasks):
        data = config.item_data(t["data"])
        old = existing.get(task_id)
        if old is not None and old.data.get("transcript_of") and old.data["transcript_of"] == data.get("audio") \
                and "text" not in data:  # the transcript that stands in for text stays with its audio
            data.update(text=old.data["text"], transcript_of=old.data["transcript_of"])
        if old is not None and old.data == data:
            continue
        text = data.get("text")
        records.append(repo.ItemRecord(external_id=str(t["id"]), data=data, ls_task_id=task_id,
                                       text_sha=sha256(text.encode()) if text else None))
    if records:
        repo.upsert_items(session, project=project, records=records)
        session.flush()
        existing = repo.items_by_task_ids(session, project=project, task_ids=ids)
    return existing


def _annotator(annotation: dict) -> str:
    """Who made an annotation: the user id (webhooks send the id; the task list expands it into the user)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id") or who.get("email")
    return str(who or "")


def annotation_keys(annotation_id: int, config: LabelConfig | None) -> dict[str | None, str]:
    """Control key (None: the primary) → the label key of one annotation's answer to it."""
    keys: dict[str | None, str] = {None: f"ls:{annotation_id}"}
    for control in (config.controls if config else ())[1:]:
        keys[control.name] = f"ls:{annotation_id}#{control.name}"
    return keys


def _annotation_of(key: str) -> str:
    """The annotation a label key belongs to (``ls:12#mood`` → ``ls:12``)."""
    return key.split("#", 1)[0]


def record_annotations(session, project: Project, config: LabelConfig | None, annotations: list[dict],
                       tasks: list[dict]) -> int:
    """Store each annotation's answer to each classification control as a label (``tasks`` carrying
    them are upserted first); a skipped task, a cancelled annotation or a control left unanswered
    removes that answer's label. Returns the annotations with at least one answer stored."""
    config = config or project_config(project)
    if config is None:
        raise AnnotatorError(f"project {project.ls_project_id}: annotation arrived before any label config")
    by_task = {parse_id(t["id"]): t for t in tasks if isinstance(t, dict) and "id" in t}
    if by_task:
        upsert_tasks(session, project, config, list(by_task.values()))
    items = repo.items_by_task_ids(session, project=project,
                                   task_ids=[parse_id(a.get("task")) for a in annotations if a.get("task") is not None])
    records, skipped, answered = [], [], set()
    for a in annotations:
        keys = annotation_keys(parse_id(a.get("id"), "annotation"), config)
        item = items.get(parse_id(a["task"])) if a.get("task") is not None else None
        for control in config.controls or (None,):
            control_key = config.control_key(control) if control is not None else None
            labels = [] if a.get("was_cancelled") or control is None else control.labels_from_result(a.get("result") or [])
            if item is None or not labels:
                skipped.append(keys[control_key])  # a skip, no answer, or a task we never saw
                continue
            records.append(repo.LabelRecord(item.id, labels, keys[control_key], created_by=_annotator(a),
                                            control=control_key))
            answered.add(keys[None])
    repo.upsert_labels(session, project=project, records=records)
    if skipped:
        repo.soft_delete_labels(session, project=project, annotation_keys=skipped)
    return len(answered)


def mirror_project(session, ls_project_id: int, schema: str, tasks: list[dict[str, Any]], *,
                   listed_at: datetime | None = None, full: bool = False) -> tuple[int, int, int]:
    """Make the store match a pull of a Label Studio project: every task, every annotation, and
    labels whose annotation is gone from Label Studio soft-deleted — unless they were written after
    ``listed_at`` (when the listing began: a webhook's label is newer than a listing that could not
    see it). ``full``: the listing holds every task, so items whose task is not in it are deleted
    too, unless they arrived after ``listed_at``. Returns (labels stored, labels deleted, items deleted)."""
    config = parse_label_config(schema)
    p = ensure_project(session, ls_project_id, schema, config)
    items = upsert_tasks(session, p, config, [{"id": t["id"], "data": t["data"]} for t in tasks]) if tasks else {}
    annotations = [{**a, "task": t["id"]} for t in tasks for a in (t.get("annotations") or [])]
    recorded = record_annotations(session, p, config, annotations, [])
    live = {f"ls:{a['id']}" for a in annotations}
    pks = [it.id for it in items.values()]
    stale = [k for k in repo.live_annotation_keys(session, project=p, item_pks=pks, prefix="ls:",
                                                  updated_before=listed_at)
             if _annotation_of(k) not in live]
    deleted = repo.soft_delete_labels(session, project=p, annotation_keys=stale)
    gone = []
    if full and listed_at is not None:
        gone = repo.delete_items(session, project=p, external_ids=repo.task_items_missing(
            session, project=p, task_ids=[parse_id(t["id"]) for t in tasks], created_before=listed_at))
    return recorded, deleted, len(gone)

"""Label Studio side, through label-studio-sdk 2.x: connect a project, pull annotations, push
predictions in bulk.

Bulk upload (`import_predictions`) is ~100× faster than Label Studio calling /predict task by task
(docs/label-studio-verified.md §7). After pushing, the project's ``model_version`` is set to ours:
Label Studio's uncertainty sampling only orders tasks by predictions of that version.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from annotator.config import Settings
from annotator.errors import ConfigError
from annotator.labelstudio.label_config import parse_label_config
from annotator.runtime import Encoders
from annotator.serving import Backend, project_name_for
from annotator.store import Store, repo


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj)


def client_for(url: str | None, api_key: str | None):
    from label_studio_sdk import LabelStudio

    if not url or not api_key:
        raise ConfigError("Label Studio URL and API key are needed: pass --url/--api-key or set "
                          "ANNOTATOR_LABEL_STUDIO_URL and ANNOTATOR_LABEL_STUDIO_API_KEY")
    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key)


def list_tasks(ls, ls_project_id: int, *, page_size: int = 500) -> list[dict[str, Any]]:
    return [_as_dict(t) for t in ls.tasks.list(project=ls_project_id, fields="all", page_size=page_size)]


def has_prediction(task: dict[str, Any], version: str) -> bool:
    """Whether Label Studio already holds a prediction of ``version`` for this task (then pushing
    another would only duplicate it)."""
    return any(_as_dict(p).get("model_version") == version for p in task.get("predictions") or []
               if not isinstance(p, int))


def predict_missing(backend: Backend, tasks: list[dict[str, Any]], *, ls_project_id: int, schema: str,
                    chunk: int = 500, progress: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Predictions (ready for `push_predictions`) for the tasks lacking one of the serving version."""
    version = backend.setup(project=ls_project_id, schema=schema)["model_version"]
    todo = [{"id": t["id"], "data": t["data"]} for t in tasks if not has_prediction(t, version)]
    out = []
    bar = tqdm(total=len(todo), desc="predict", unit="task", file=sys.stderr, disable=not progress)
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        for t, r in zip(batch, backend.predict(tasks=batch, project=ls_project_id, label_config=schema)["results"]):
            if r["result"]:
                out.append({"task": t["id"], "result": r["result"], "score": r["score"],
                            "model_version": r["model_version"]})
        bar.update(len(batch))
    bar.close()
    return out, version


def sync(store: Store, settings: Settings, *, url: str, api_key: str, ls_project_id: int,
         ls=None, tasks: list[dict] | None = None) -> dict[str, Any]:
    """Pull the project's tasks and annotations into the store (works without webhooks, and recovers
    events missed while the backend was down: annotations deleted in Label Studio are soft-deleted)."""
    ls = ls or client_for(url, api_key)
    project = _as_dict(ls.projects.get(id=ls_project_id))
    schema = project["label_config"]
    config = parse_label_config(schema)
    tasks = tasks if tasks is not None else list_tasks(ls, ls_project_id)
    backend = Backend(settings.with_label_studio(url, api_key), store=store, encoders=Encoders(settings),
                      start_trainer=False)
    annotations = [{**_as_dict(a), "task": t["id"]} for t in tasks for a in (t.get("annotations") or [])]
    live = {f"ls:{a['id']}" for a in annotations}

    def write(s) -> tuple[int, int]:
        p = backend.ensure_project(s, ls_project_id, schema, config)
        if tasks:
            backend.upsert_tasks(s, p, config, [{"id": t["id"], "data": t["data"]} for t in tasks])
        recorded = backend.record_annotations(s, p, config, annotations, [])
        synced_items = repo.items_by_task_ids(s, project=p, task_ids=[t["id"] for t in tasks])
        stale = [k for k in _label_keys(s, p, [it.id for it in synced_items.values()]) if k not in live]
        return recorded, repo.soft_delete_labels(s, project=p, annotation_keys=stale)

    # the backend's trainer syncs while webhooks for the same tasks may arrive: an upsert race reruns it
    recorded, deleted = store.run(write)
    return {"project": project_name_for(ls_project_id), "tasks": len(tasks), "labels": recorded,
            "deleted_labels": deleted}


def _label_keys(session, project, item_pks: Iterable[int]) -> list[str]:
    from sqlalchemy import select

    from annotator.store.models import Label

    pks = list(item_pks)
    if not pks:
        return []
    return list(session.scalars(select(Label.annotation_key).where(
        Label.project_id == project.id, Label.item_id.in_(pks), Label.deleted_at.is_(None),
        Label.annotation_key.like("ls:%"))))


def connect(store: Store, settings: Settings, *, url: str, api_key: str, ls_project_id: int,
            backend_url: str | None = None, title: str = "annotator", encoders: Encoders | None = None,
            chunk: int = 500, progress: bool = True) -> dict[str, Any]:
    """Wire a Label Studio project to annotator.

    Registers the backend (when ``backend_url`` is given and not registered yet), imports the
    project's tasks and annotations, predicts every task and uploads the predictions in bulk, then
    sets the project's model_version to ours.
    """
    ls = client_for(url, api_key)
    ml_id = None
    if backend_url:
        existing = [b for b in ls.ml.list(project=ls_project_id) if (b.url or "").rstrip("/") == backend_url.rstrip("/")]
        ml_id = existing[0].id if existing else register_backend(ls, ls_project_id, backend_url, title)
    tasks = list_tasks(ls, ls_project_id)
    synced = sync(store, settings, url=url, api_key=api_key, ls_project_id=ls_project_id, ls=ls, tasks=tasks)
    backend = Backend(settings.with_label_studio(url, api_key), store=store, encoders=encoders or Encoders(settings),
                      start_trainer=False)
    schema = _as_dict(ls.projects.get(id=ls_project_id))["label_config"]
    predictions, version = predict_missing(backend, tasks, ls_project_id=ls_project_id, schema=schema,
                                           chunk=chunk, progress=progress)
    pushed = push_predictions(ls, ls_project_id, predictions)
    if any(has_prediction(t, version) for t in tasks) or pushed:
        ls.projects.update(id=ls_project_id, model_version=version)
    return {**synced, "ml_backend_id": ml_id, "predictions": pushed, "model_version": version}


def register_backend(ls, ls_project_id: int, backend_url: str, title: str) -> int:
    """Add the backend to the project's Model settings; a refusal gets a message that says why."""
    from label_studio_sdk.core.api_error import ApiError

    from annotator.errors import AnnotatorError

    try:
        return ls.ml.create(project=ls_project_id, url=backend_url, title=title, is_interactive=False).id
    except ApiError as exc:
        body = str(exc.body)
        if exc.status_code == 403 and "reserved network" in body:
            raise AnnotatorError(
                f"Label Studio refused the backend at {backend_url}: it blocks loopback and private-network ML "
                "backends by default. Restart Label Studio with USE_DEFAULT_BANNED_SUBNETS=false, or give "
                "--backend-url an address Label Studio may reach") from None
        raise AnnotatorError(f"Label Studio refused the backend at {backend_url} (HTTP {exc.status_code}): {body}") from None


def push_predictions(ls, ls_project_id: int, predictions: list[dict[str, Any]], *, chunk: int = 1000) -> int:
    """Bulk-create predictions; returns how many were sent."""
    for start in range(0, len(predictions), chunk):
        ls.projects.import_predictions(id=ls_project_id, request=predictions[start:start + chunk])
    return len(predictions)


# --- active learning into Label Studio -----------------------------------------------------------

def _ls_project(store: Store, project_name: str):
    from annotator.errors import NotFoundError

    with store.session() as s:
        p = repo.get_project(s, name=project_name)
        if p.ls_project_id is None or not p.label_config:
            raise NotFoundError(f"project {project_name!r} is not connected to Label Studio; run `annotator ls connect`")
        return p.ls_project_id, parse_label_config(p.label_config), {it.external_id: it.ls_task_id
                                                                   for it in repo.list_items(s, project=p)}


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def push_next_batch(store: Store, settings: Settings, *, url: str, api_key: str, project_name: str,
                    picks: list[dict[str, Any]], strategy: str, encoders: Encoders | None = None) -> dict[str, Any]:
    """Make Label Studio serve ``picks`` first, in order.

    Every task gets a prediction (the active model's label, so pre-labels still show) under a new
    model version; picked tasks get the lowest scores in pick order, the rest score above them.
    The project's model_version is switched to it, so Label Studio's "Uncertainty sampling" (and
    sorting by prediction score) follow our strategy.
    """
    from annotator.prediction import predict

    ls_pid, config, task_of = _ls_project(store, project_name)
    predicted = predict(store, settings, project_name=project_name, encoders=encoders, save=False, progress=False)
    rank = {p["id"]: i for i, p in enumerate(picks)}
    version = f"{predicted.model_version}-next-{strategy}-{_stamp()}"
    out = []
    for p in predicted.predictions:
        labels = p["label"] if isinstance(p["label"], list) else [p["label"]]
        score = 1e-4 * (rank[p["id"]] + 1) if p["id"] in rank else 0.5 + 0.5 * p["score"]
        if task_of.get(p["id"]) is not None and labels:
            out.append({"task": task_of[p["id"]], "result": [config.region(labels, p["score"])], "score": score,
                        "model_version": version})
    ls = client_for(url, api_key)
    push_predictions(ls, ls_pid, out)
    ls.projects.update(id=ls_pid, model_version=version, sampling="Uncertainty sampling")
    return {"model_version": version, "predictions": len(out), "batch": len(picks)}


def push_review_queue(store: Store, settings: Settings, *, url: str, api_key: str, project_name: str,
                      suspects: list[dict[str, Any]], limit: int = 100) -> dict[str, Any]:
    """Suspected label errors become a review queue: a prediction with the suggested label (score =
    1 − suspicion, so the most suspicious sort first) and a Data Manager tab listing those tasks."""
    ls_pid, config, task_of = _ls_project(store, project_name)
    top = [s for s in suspects if task_of.get(s["id"]) is not None][:limit]
    version = f"review-{_stamp()}"
    ls = client_for(url, api_key)
    push_predictions(ls, ls_pid, [{"task": task_of[s["id"]], "result": [config.region([s["suggested"]], s["score"])],
                                   "score": 1.0 - s["score"], "model_version": version} for s in top])
    view = ls.views.create(project=ls_pid, data={
        "title": f"annotator: {len(top)} suspected label errors",
        "filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:id", "operator": "in_list",
                                                     "type": "Number", "value": [task_of[s["id"]] for s in top]}]},
        "ordering": ["tasks:id"]})
    return {"model_version": version, "tasks": len(top), "view_id": view.id}

"""Keep a Label Studio project and the store in step, both ways.

In: `sync` pulls tasks and annotations (works without webhooks, and recovers events missed while
the backend was down). Out: `publish_predictions` pushes the serving model's pre-labels in bulk from
cached vectors and sets the project's ``model_version`` to ours; `push_next_batch` and
`push_review_queue` turn active-learning results into what Label Studio serves next, and
`push_search_tab` puts search hits into a tab, most similar first.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tqdm import tqdm

from annotator.config import Settings
from annotator.errors import NotFoundError
from annotator.labelstudio import client
from annotator.labelstudio.label_config import LabelConfig, parse_label_config
from annotator.labelstudio.tasks import mirror_project, project_name_for, remember_access
from annotator.labelstudio.prelabels import (
    ServedControl,
    prepare_project,
    served_controls,
    served_version,
    task_predictions,
    transcripts_for,
)
from annotator.runtime import Runtime
from annotator.store import Store, repo
from annotator.store.models import Item, utcnow

PUBLISH_CHUNK = 2000  # items scored at a time: bounds memory on large projects


def sync(store: Store, *, url: str, api_key: str, ls_project_id: int, ls=None,
         tasks: list[dict] | None = None, listed_at: datetime | None = None,
         updated_after: datetime | None = None) -> dict[str, Any]:
    """Pull the project's tasks and annotations into the store; annotations deleted in Label Studio
    are soft-deleted here. ``updated_after`` pulls only the tasks changed since then (their
    annotations' changes included); only a full pull can see that a task was deleted. ``tasks``: a
    listing the caller made, begun at ``listed_at`` (labels written after it are never taken for
    deleted). The result's ``last_update`` is the newest task change seen, on Label Studio's clock:
    the next incremental pull's starting point."""
    ls = ls or client.client_for(url, api_key)
    schema = client.get_label_config(ls, ls_project_id)
    full = tasks is None and updated_after is None  # a full listing of our own: items whose task is gone are deleted
    if tasks is None:
        listed_at = utcnow()
        tasks = client.list_tasks(ls, ls_project_id, updated_after=updated_after)
    tasks = [{**t, "annotations": [client.as_dict(a) for a in t.get("annotations") or []]} for t in tasks]
    # the backend's trainer syncs while webhooks for the same tasks may arrive: an upsert race reruns it
    recorded, deleted, gone = store.run(lambda s: mirror_project(s, ls_project_id, schema, tasks, listed_at=listed_at,
                                                                 full=full))
    return {"project": project_name_for(ls_project_id), "tasks": len(tasks), "labels": recorded,
            "deleted_labels": deleted, "deleted_tasks": gone, "last_update": client.last_update(tasks)}


def publish_predictions(store: Store, runtime: Runtime, ls, *, project_name: str,
                        tasks: Sequence[dict] | None = None, task_ids: Sequence[int] | None = None,
                        progress: bool = False) -> tuple[int, str]:
    """Push the serving model's prediction for every task (or only ``task_ids``) from cached vectors
    (a task never encoded gets its prediction when Label Studio asks /predict), skipping ``tasks``
    that already hold one of that version; then make it the project's model version. Returns
    (predictions sent, version)."""
    ls_pid, config, items, _ = _task_items(store, project_name)
    served = _served(store, runtime, project_name, config)
    version = served_version(served)
    done = {int(t["id"]) for t in tasks or [] if client.has_prediction(t, version)}
    wanted = set(task_ids) if task_ids is not None else None
    items = [it for it in items if it.ls_task_id not in done and (wanted is None or it.ls_task_id in wanted)]
    sent = 0
    bar = tqdm(total=len(items), desc="publish", unit="task", file=sys.stderr, disable=not progress)
    for start in range(0, len(items), PUBLISH_CHUNK):
        chunk = items[start:start + PUBLISH_CHUNK]
        with store.session() as s:
            transcripts = transcripts_for(s, chunk, config, encoders=runtime.encoders)
        out = [{"task": it.ls_task_id, **pred, "model_version": version}
               for it, pred in zip(chunk, task_predictions(chunk, served, encoders=runtime.encoders, config=config,
                                                           transcripts=transcripts,
                                                           explanation_textarea=runtime.settings.explanation_textarea))
               if pred is not None]
        sent += client.push_predictions(ls, ls_pid, out)
        bar.update(len(chunk))
    bar.close()
    if sent or done:
        client.set_model_version(ls, ls_pid, version)
    return sent, version


def push_project_predictions(store: Store, runtime: Runtime, *, url: str, api_key: str, project_name: str,
                             progress: bool = True) -> tuple[int, str]:
    """`publish_predictions` for every task of a connected project that does not hold the serving
    version's prediction yet (``annotator predict --to-labelstudio``). Returns (sent, version)."""
    ls = client.client_for(url, api_key)
    with store.session() as s:
        ls_pid, _ = _connected(repo.get_project(s, name=project_name))
    return publish_predictions(store, runtime, ls, project_name=project_name, tasks=client.list_tasks(ls, ls_pid),
                               progress=progress)


def connect(store: Store, settings: Settings, *, url: str, api_key: str, ls_project_id: int,
            backend_url: str | None = None, title: str = "annotator", runtime: Runtime | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Wire a Label Studio project to annotator.

    Registers the backend (when ``backend_url`` is given and not registered yet) and gives its
    webhook the project's secret (``settings.webhook_secret``, else one made for the project), so
    the backend trusts those events; imports the project's tasks and annotations, encodes their
    media (through Label Studio, with this key), and uploads the serving model's predictions for
    every task in bulk. The URL and key are stored with the project: the backend checks
    unauthenticated events against Label Studio with them.
    """
    ls = client.client_for(url, api_key)
    ml_id = None
    if backend_url:
        ml_id = client.find_backend(ls, ls_project_id, backend_url) or client.register_backend(
            ls, ls_project_id, backend_url, title)
    listed_at = utcnow()
    tasks = client.list_tasks(ls, ls_project_id)
    synced = sync(store, url=url, api_key=api_key, ls_project_id=ls_project_id, ls=ls, tasks=tasks,
                  listed_at=listed_at)
    name = project_name_for(ls_project_id)
    secret = store.run(lambda s: _connect_project(s, settings, name, url, api_key))
    webhook_id = client.secure_webhook(ls, ls_project_id, backend_url, secret) if backend_url else None
    runtime = runtime or Runtime(settings)
    report = prepare_project(store, settings.with_label_studio(url, api_key), project_name=name,
                             encoders=runtime.encoders, progress=progress)
    pushed, version = publish_predictions(store, runtime, ls, project_name=name, tasks=tasks, progress=progress)
    return {**synced, "ml_backend_id": ml_id, "webhook_id": webhook_id, "predictions": pushed,
            "model_version": version, "failed": report.failed}


def _connect_project(s, settings: Settings, name: str, url: str, api_key: str) -> str:
    """Store how to reach Label Studio; return the webhook secret (made once per project unless the
    deployment configures one)."""
    p = repo.get_project(s, name=name)
    remember_access(p, url, api_key, trusted=True)  # the operator's own command
    if settings.webhook_secret:
        return settings.webhook_secret.get_secret_value()
    p.webhook_secret = p.webhook_secret or secrets.token_urlsafe(32)
    return p.webhook_secret


# --- active learning into Label Studio -----------------------------------------------------------

def _connected(project) -> tuple[int, LabelConfig]:
    if project.ls_project_id is None or not project.label_config:
        raise NotFoundError(f"project {project.name!r} is not connected to Label Studio; run `annotator ls connect`")
    return project.ls_project_id, parse_label_config(project.label_config)


def _task_items(store: Store, project_name: str) -> tuple[int, LabelConfig, list[Item], dict[str, int]]:
    with store.session() as s:
        p = repo.get_project(s, name=project_name)
        ls_pid, config = _connected(p)
        items = [it for it in repo.list_items(s, project=p) if it.ls_task_id is not None]
    return ls_pid, config, items, {it.external_id: it.ls_task_id for it in items}


def _served(store: Store, runtime: Runtime, project_name: str, config: LabelConfig) -> list[ServedControl]:
    with store.session() as s:
        return served_controls(s, runtime, repo.get_project(s, name=project_name), config)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def push_next_batch(store: Store, runtime: Runtime, *, url: str, api_key: str, project_name: str,
                    picks: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
    """Make Label Studio serve ``picks`` first, in order.

    Every task gets a prediction (the active model's label, so pre-labels still show) under a new
    model version; picked tasks get the lowest scores in pick order, the rest score above them.
    The project's model_version is switched to it, so Label Studio's "Uncertainty sampling" (and
    sorting by prediction score) follow our strategy.
    """
    ls_pid, config, items, _ = _task_items(store, project_name)
    served = _served(store, runtime, project_name, config)
    version = f"{served_version(served)}-next-{strategy}-{_stamp()}"
    rank = {p["id"]: i for i, p in enumerate(picks)}
    out = []
    with store.session() as s:
        transcripts = transcripts_for(s, items, config, encoders=runtime.encoders)
    for it, pred in zip(items, task_predictions(items, served, encoders=runtime.encoders, config=config,
                                                transcripts=transcripts,
                                                explanation_textarea=runtime.settings.explanation_textarea)):
        if pred is None:
            continue
        score = 1e-4 * (rank[it.external_id] + 1) if it.external_id in rank else 0.5 + 0.5 * pred["score"]
        out.append({"task": it.ls_task_id, "result": pred["result"], "score": score, "model_version": version})
    ls = client.client_for(url, api_key)
    client.push_predictions(ls, ls_pid, out)
    client.set_model_version(ls, ls_pid, version, sampling="Uncertainty sampling")
    return {"model_version": version, "predictions": len(out), "batch": len(picks)}


def _as_list(labels: str | list[str]) -> list[str]:
    """A suggestion is one label, or a label set in a multi-label project."""
    return list(labels) if isinstance(labels, (list, tuple)) else [labels]


def push_review_queue(store: Store, *, url: str, api_key: str, project_name: str,
                      suspects: list[dict[str, Any]], limit: int = 100,
                      title: str = "suspected label errors") -> dict[str, Any]:
    """Suspected label errors (or contested tasks) become a review queue: a prediction with the
    suggested label (score = 1 − suspicion, so the most suspicious sort first) and a Data Manager
    tab listing those tasks."""
    ls_pid, config, _, task_of = _task_items(store, project_name)
    top = [s for s in suspects if task_of.get(s["id"]) is not None][:limit]
    version = f"review-{_stamp()}"
    ls = client.client_for(url, api_key)
    client.push_predictions(ls, ls_pid, [{"task": task_of[s["id"]], "result": [config.region(_as_list(s["suggested"]), s["score"])],
                                          "score": 1.0 - s["score"], "model_version": version} for s in top])
    view_id = client.create_task_view(ls, ls_pid, f"annotator: {len(top)} {title}",
                                      [task_of[s["id"]] for s in top])
    return {"model_version": version, "tasks": len(top), "view_id": view_id}


SEARCH_TAB = "annotator search"
SIMILARITY_KEY = "annotator_similarity"  # the task-data field a search tab is ordered by


def push_search_tab(store: Store, *, url: str, api_key: str, project_name: str, hits: list[dict[str, Any]],
                    query: str) -> dict[str, Any]:
    """Search hits become the project's search tab in Label Studio, most similar first, so an
    annotator can label them together; a new search replaces the tab rather than adding one.

    Label Studio orders a tab by a column, and no column of its own can hold our similarity (its
    prediction score only averages the project's model version), so each hit's similarity is
    written into its task data as ``annotator_similarity``: the tab sorts by it, and annotators see
    it. The previous search's hits that are not hits now lose the field again.
    """
    ls_pid, _, _, task_of = _task_items(store, project_name)
    scores = {task_of[h["id"]]: round(float(h["score"]), 4) for h in hits if task_of.get(h["id"]) is not None}
    ls = client.client_for(url, api_key)
    client.set_task_data_values(ls, scores, SIMILARITY_KEY)
    title = f"{SEARCH_TAB}: {query}"[:120]
    view_id, before = client.replace_task_view(ls, ls_pid, SEARCH_TAB, title, list(scores), SIMILARITY_KEY)
    client.set_task_data_values(ls, {t: None for t in before if t not in scores}, SIMILARITY_KEY)
    return {"view_id": view_id, "tasks": len(scores), "title": title}

"""Label Studio's API through label-studio-sdk 2.x: input and output only, no decisions.

Bulk upload (`import_predictions`) is ~100× faster than Label Studio calling /predict task by task
(docs/label-studio-verified.md §7).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from annotator.errors import AnnotatorError, ConfigError

SECRET_HEADER = "X-Annotator-Secret"  # what the backend checks on /webhook


def as_dict(obj: Any) -> dict[str, Any]:
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


def get_label_config(ls, ls_project_id: int) -> str:
    return as_dict(ls.projects.get(id=ls_project_id))["label_config"]


def list_tasks(ls, ls_project_id: int, *, page_size: int = 500,
               updated_after: datetime | None = None) -> list[dict[str, Any]]:
    """Every task with its annotations and predictions; with ``updated_after``, only the tasks Label
    Studio changed after it (a task's ``updated_at`` moves when one of its annotations is created,
    updated or deleted: seen on Label Studio 1.23.2). Media references stay as stored (``s3://…``,
    as webhooks and /predict send them), not rewritten into Label Studio's resolve URLs."""
    query = {}
    if updated_after is not None:  # a Data Manager filter; Label Studio reads only this timestamp format
        stamp = updated_after.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        query["query"] = json.dumps({"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": stamp}]}})
    return [as_dict(t) for t in ls.tasks.list(project=ls_project_id, fields="all", page_size=page_size,
                                              resolve_uri=False, **query)]


def last_update(tasks: list[dict[str, Any]]) -> datetime | None:
    """The newest ``updated_at`` among ``tasks``, on Label Studio's clock (None for no task)."""
    stamps = [t["updated_at"] if isinstance(t["updated_at"], datetime) else
              datetime.fromisoformat(str(t["updated_at"]).replace("Z", "+00:00"))
              for t in tasks if t.get("updated_at")]
    return max(stamps, default=None)


def has_prediction(task: dict[str, Any], version: str) -> bool:
    """Whether Label Studio already holds a prediction of ``version`` for this task (then pushing
    another would only duplicate it)."""
    return any(as_dict(p).get("model_version") == version for p in task.get("predictions") or []
               if not isinstance(p, int))


def push_predictions(ls, ls_project_id: int, predictions: list[dict[str, Any]], *, chunk: int = 1000) -> int:
    """Bulk-create predictions; returns how many were sent."""
    for start in range(0, len(predictions), chunk):
        ls.projects.import_predictions(id=ls_project_id, request=predictions[start:start + chunk])
    return len(predictions)


def set_model_version(ls, ls_project_id: int, version: str, **project_fields: Any) -> None:
    """Make ``version`` the project's model version: Label Studio's uncertainty sampling only orders
    tasks by predictions of that version."""
    ls.projects.update(id=ls_project_id, model_version=version, **project_fields)


def create_task_view(ls, ls_project_id: int, title: str, task_ids: list[int]) -> int:
    """A Data Manager tab listing ``task_ids``; returns its id."""
    view = ls.views.create(project=ls_project_id, data={
        "title": title,
        "filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:id", "operator": "in_list",
                                                     "type": "Number", "value": task_ids}]},
        "ordering": ["tasks:id"]})
    return view.id


def replace_task_view(ls, ls_project_id: int, title_prefix: str, title: str, task_ids: list[int],
                      order_by_data_key: str) -> tuple[int, list[int]]:
    """Make the project's one tab whose title starts with ``title_prefix`` list ``task_ids``, ordered
    by the numeric task-data field ``order_by_data_key``, highest first: an existing such tab is
    updated (any others with the prefix are removed), else one is created. Returns (its id, the task
    ids the replaced tabs listed)."""
    column = f"tasks:data.{order_by_data_key}"
    data = {"title": title,
            "filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:id", "operator": "in_list",
                                                         "type": "Number", "value": task_ids}]},
            "ordering": [f"-{column}"], "columnsDisplayType": {column: "Number"}}
    ours = [v for v in ls.views.list(project=ls_project_id) if str((v.data or {}).get("title", "")).startswith(title_prefix)]
    listed = [int(t) for v in ours for item in ((v.data or {}).get("filters") or {}).get("items", [])
              if item.get("filter") == "filter:tasks:id" for t in item.get("value") or []]
    for extra in ours[1:]:
        ls.views.delete(id=str(extra.id))
    if ours:
        return ls.views.update(id=str(ours[0].id), project=ls_project_id, data=data).id, listed
    return ls.views.create(project=ls_project_id, data=data).id, listed


def set_task_data_values(ls, values: dict[int, Any], key: str) -> None:
    """Write ``values[task]`` into each task's data under ``key`` (None removes the key)."""
    for task_id, value in values.items():
        data = dict(as_dict(ls.tasks.get(id=str(task_id))).get("data") or {})
        if value is None and key not in data:
            continue
        if value is None:
            data.pop(key)
        else:
            data[key] = value
        ls.tasks.update(id=str(task_id), data=data)


def find_backend(ls, ls_project_id: int, backend_url: str) -> int | None:
    """The id of the ML backend at ``backend_url`` in the project's Model settings, if registered."""
    found = [b for b in ls.ml.list(project=ls_project_id) if (b.url or "").rstrip("/") == backend_url.rstrip("/")]
    return found[0].id if found else None


def register_backend(ls, ls_project_id: int, backend_url: str, title: str) -> int:
    """Add the backend to the project's Model settings; a refusal gets a message that says why."""
    from label_studio_sdk.core.api_error import ApiError

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


def secure_webhook(ls, ls_project_id: int, backend_url: str, secret: str) -> int:
    """Make the project's webhook to the backend send ``secret`` in `SECRET_HEADER` (creating the
    webhook, with every action and its payload, if Label Studio did not); returns its id."""
    target = backend_url.rstrip("/") + "/webhook"
    hooks = [h for h in ls.webhooks.list(project=str(ls_project_id)) if (h.url or "").rstrip("/") == target]
    for hook in hooks:
        ls.webhooks.update(id=hook.id, url=target, headers={**(hook.headers or {}), SECRET_HEADER: secret},
                           send_payload=True, send_for_all_actions=True, is_active=True)
    if hooks:
        return hooks[0].id
    return ls.webhooks.create(project=ls_project_id, url=target, headers={SECRET_HEADER: secret}, send_payload=True,
                              send_for_all_actions=True, is_active=True).id

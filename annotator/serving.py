"""The Label Studio ML backend's logic, independent of the web framework.

`Backend` is built once per server process (FastAPI lifespan) and holds the loaded encoders, the
store, per-project models (reloaded when another process promotes a new version) and a trainer
thread. Training is DB-driven: webhooks only record labels; the trainer retrains a project when
labels have been quiet for ``debounce_s`` seconds, or when ``debounce_labels`` changes piled up and
the last training started at least ``min_interval_s`` ago, or when Label Studio asked
(START_TRAINING). A per-project file lock keeps training to one process at a time, and because the
decision reads the database, events missed by one process (or before a crash) are not lost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.errors import AnnotatorError, NotEnoughLabelsError
from annotator.labelstudio.label_config import LabelConfig, parse_label_config
from annotator.media import MediaFetcher, sha256
from annotator.prediction import score_items
from annotator.runtime import Encoders
from annotator.store import Store, open_store, repo
from annotator.store.models import Item, utcnow

log = logging.getLogger("annotator.backend")
ZERO_SHOT = "zero-shot"
UNTRAINED = "untrained"
LABEL_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
DELETE_EVENTS = {"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"}


def project_name_for(ls_project_id: int) -> str:
    return f"ls-{ls_project_id}"


def parse_project_id(value: Any) -> int:
    """Label Studio sends ``"<id>.<created timestamp>"`` (or an int); the id is before the dot."""
    try:
        return int(str(value).split(".", 1)[0])
    except (TypeError, ValueError):
        raise AnnotatorError(f"cannot read a Label Studio project id from {value!r}") from None


@dataclass
class _Loaded:
    version: str
    clf: Any


class Backend:
    """One per process. Parameters are the debounce policy; see the module docstring."""

    def __init__(self, settings: Settings, *, store: Store | None = None, encoders: Encoders | None = None,
                 debounce_s: float = 5.0, debounce_labels: int = 100, min_interval_s: float = 60.0,
                 poll_s: float = 1.0, start_trainer: bool = True):
        self.settings = settings
        self.store = store or open_store(settings)
        self.encoders = encoders or Encoders(settings)
        self.debounce_s, self.debounce_labels = debounce_s, debounce_labels
        self.min_interval_s, self.poll_s = min_interval_s, poll_s
        self._models: dict[str, _Loaded] = {}
        self._ls_access: dict[int, tuple[str, str]] = {}  # project → (hostname, token) from /setup
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._trainer: threading.Thread | None = None
        self.trainings = 0
        if start_trainer:
            self._trainer = threading.Thread(target=self._train_loop, name="annotator-trainer", daemon=True)
            self._trainer.start()

    def close(self) -> None:
        self._stop.set()
        if self._trainer is not None:
            self._trainer.join(timeout=30)
        self.store.close()

    # --- protocol ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "annotator", "trainer_alive": bool(self._trainer and self._trainer.is_alive())}

    def setup(self, *, project: Any, schema: str, hostname: str | None = None, access_token: str | None = None,
              extra_params: dict | None = None) -> dict[str, str]:
        """Register (or update) the project and its label config; return the serving model version.
        Cheap: no model is loaded here."""
        pid = parse_project_id(project)
        config = parse_label_config(schema)
        if hostname and access_token:
            self._ls_access[pid] = (hostname, access_token)
        return self.store.run(lambda s: {"model_version": self._serving_version(
            s, self.ensure_project(s, pid, schema, config), config)})

    def ensure_project(self, session, pid: int, schema: str | None, config: LabelConfig | None):
        p = repo.get_or_create_project(session, name=project_name_for(pid))
        p.ls_project_id = pid
        if schema and p.label_config != schema:
            p.label_config = schema
        if config is not None and config.choices is not None:
            if p.classes != list(config.choices.values):
                p.classes = list(config.choices.values)
            p.multilabel = config.choices.multiple
        return p

    def _serving_version(self, session, project, config: LabelConfig) -> str:
        active = repo.active_model_version(session, project=project)
        if active is not None:
            return active.version
        return ZERO_SHOT if config.choices is not None else UNTRAINED

    def predict(self, *, tasks: list[dict], project: Any = None, label_config: str | None = None,
                params: dict | None = None) -> dict[str, Any]:
        """One result per task, same order; a task whose media fails gets an empty result."""
        if not tasks:
            return {"results": []}
        pid = parse_project_id(project if project is not None else tasks[0].get("project"))

        def register(s) -> LabelConfig:
            p = repo.get_or_create_project(s, name=project_name_for(pid))
            schema = label_config or p.label_config
            if not schema:
                raise AnnotatorError(f"project {pid}: no label config yet (Label Studio sends it with /setup)")
            config = parse_label_config(schema)
            self.upsert_tasks(s, self.ensure_project(s, pid, schema, config), config, tasks)
            return config

        # the writes commit before encoding starts: a long /predict must not hold SQLite's write lock
        # while webhooks (which Label Studio never retries) wait for it
        config = self.store.run(register)
        with self.store.session() as s:
            p = repo.get_project(s, name=project_name_for(pid))
            items = repo.items_by_task_ids(s, project=p, task_ids=[int(t["id"]) for t in tasks])
            with self._fetcher(pid) as fetcher:
                report = embed_items(list(items.values()), encoders=self.encoders, fetcher=fetcher, progress=False)
            failed = {f["id"]: f["error"] for f in report.failed}
            ordered = [items[int(t["id"])] for t in tasks]
            results = self._results(s, p, config, self._serving_version(s, p, config), ordered, failed)
        return {"results": results}

    def _fetcher(self, pid: int) -> MediaFetcher:
        settings = self.settings
        if not (settings.label_studio_url and settings.label_studio_api_key) and pid in self._ls_access:
            host, token = self._ls_access[pid]
            settings = settings.with_label_studio(settings.label_studio_url or host, token)
        return MediaFetcher(settings)

    def upsert_tasks(self, session, project, config: LabelConfig, tasks: list[dict]) -> dict[int, Item]:
        """Tasks → items (external id = task id). Unchanged tasks keep their content hashes."""
        ids = []
        for t in tasks:
            if "id" not in t or not isinstance(t.get("data"), dict):
                raise AnnotatorError(f"task {t.get('id', '?')} has no id or no data object")
            ids.append(int(t["id"]))
        existing = repo.items_by_task_ids(session, project=project, task_ids=ids)
        records = []
        for t in tasks:
            data = config.item_data(t["data"])
            old = existing.get(int(t["id"]))
            if old is not None and old.data == data:
                continue
            text = data.get("text")
            records.append(repo.ItemRecord(external_id=str(t["id"]), data=data, ls_task_id=int(t["id"]),
                                           text_sha=sha256(text.encode()) if text else None))
        if records:
            repo.upsert_items(session, project=project, records=records)
            session.flush()
            existing = repo.items_by_task_ids(session, project=project, task_ids=ids)
        return existing

    def _model(self, session, project) -> _Loaded | None:
        from annotator.training import load_model

        active = repo.active_model_version(session, project=project)
        if active is None:
            return None
        with self._lock:
            cached = self._models.get(project.name)
            if cached is None or cached.version != active.version:  # another process promoted one
                clf, _ = load_model(self.settings, active)
                cached = self._models[project.name] = _Loaded(active.version, clf)
            return cached

    def _results(self, session, project, config: LabelConfig, version: str, items: list[Item],
                 failed: dict[str, str]) -> list[dict[str, Any]]:
        empty = {"result": [], "score": 0.0, "model_version": version}
        if config.choices is None:
            return [dict(empty) for _ in items]
        loaded = self._model(session, project)
        modalities = loaded.clf.modalities_ if loaded else None
        features = load_features(items, encoders=self.encoders, modalities=modalities)
        usable = usable_rows(features, len(items))
        rows = np.flatnonzero(usable)
        out = [dict(empty) for _ in items]
        if len(rows):
            sub = {m: a[rows] for m, a in features.items()}
            if loaded:
                labels, scores, _, _ = score_items(loaded.clf, sub)
                labels = [lab if isinstance(lab, list) else [lab] for lab in labels]
            else:
                labels, scores = self._zero_shot(config, sub)
            for r, lab, sc in zip(rows, labels, scores):
                if lab:
                    out[r] = {"result": [config.region(lab, float(sc))], "score": float(sc), "model_version": version}
        for it in items:
            if it.external_id in failed:
                log.warning("task %s: %s", it.external_id, failed[it.external_id])
        return out

    def _zero_shot(self, config: LabelConfig, features: dict[str, np.ndarray]) -> tuple[list[list[str]], np.ndarray]:
        """Cold start: the label names as text, compared with the item's text (same space).
        Scores are kept low (≤ 0.5): a guess to start from, not a confident pre-label."""
        values = list(config.choices.values)
        if "text" not in features:
            log.info("zero-shot needs a text field; no prediction until the first training")
            return [[] for _ in range(len(next(iter(features.values()))))], np.zeros(len(next(iter(features.values()))))
        names = self.encoders.get("text").encode([f"a {v}" for v in values])
        text = features["text"]
        sims = np.nan_to_num(text) @ names.T
        probs = np.exp(sims / 0.05)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        has_text = ~np.isnan(text).any(axis=1)
        labels = [[values[b]] if ok else [] for b, ok in zip(best, has_text)]
        return labels, 0.5 * probs.max(axis=1)

    # --- webhooks ---------------------------------------------------------------------------

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record the event in the store and return at once; training happens in the trainer."""
        action = payload.get("action")
        if not isinstance(action, str):
            raise AnnotatorError("webhook payload has no 'action'")
        project_obj = payload.get("project")
        if not isinstance(project_obj, dict) or "id" not in project_obj:
            return {"status": "ignored", "action": action, "reason": "no project in payload"}
        pid = int(project_obj["id"])
        schema = project_obj.get("label_config")
        config = parse_label_config(schema) if schema else None
        return self.store.run(lambda s: self._apply_event(s, action, pid, schema, config, payload))

    def _apply_event(self, s, action: str, pid: int, schema: str | None, config: LabelConfig | None,
                     payload: dict[str, Any]) -> dict[str, Any]:
        """One webhook's writes, in one transaction; idempotent, so a lost insert race can rerun it."""
        p = self.ensure_project(s, pid, schema, config)
        if action in LABEL_EVENTS:
            annotations = payload.get("annotation")
            tasks = payload.get("task")
            annotations = annotations if isinstance(annotations, list) else [annotations]
            tasks = tasks if isinstance(tasks, list) else [tasks]
            n = self.record_annotations(s, p, config, [a for a in annotations if a], [t for t in tasks if t])
            return {"status": "ok", "action": action, "recorded": n}
        if action in DELETE_EVENTS:
            raw = payload.get("annotations") or ([payload["annotation"]] if payload.get("annotation") else [])
            keys = [f"ls:{a['id']}" for a in raw if isinstance(a, dict) and "id" in a]
            return {"status": "ok", "action": action, "deleted": repo.soft_delete_labels(s, project=p, annotation_keys=keys)}
        if action == "START_TRAINING":
            repo.request_training(s, project=p, trigger="label-studio")
            return {"status": "ok", "action": action, "training": "requested"}
        if action == "TASKS_DELETED":
            task_ids = [int(t["id"]) for t in payload.get("tasks") or [] if isinstance(t, dict) and "id" in t]
            gone = repo.items_by_task_ids(s, project=p, task_ids=task_ids)
            repo.delete_items(s, project=p, external_ids=[it.external_id for it in gone.values()])
            return {"status": "ok", "action": action, "deleted": len(gone)}
        return {"status": "ignored", "action": action}

    def record_annotations(self, session, project, config: LabelConfig | None, annotations, tasks) -> int:
        if config is None:
            config = parse_label_config(project.label_config) if project.label_config else None
        if config is None:
            raise AnnotatorError(f"project {project.ls_project_id}: annotation arrived before any label config")
        by_task = {int(t["id"]): t for t in tasks if isinstance(t, dict) and "id" in t}
        if by_task:
            self.upsert_tasks(session, project, config, list(by_task.values()))
        items = repo.items_by_task_ids(session, project=project,
                                       task_ids=[int(a.get("task")) for a in annotations if a.get("task") is not None])
        records, skipped = [], []
        for a in annotations:
            key = f"ls:{a.get('id')}"
            item = items.get(int(a["task"])) if a.get("task") is not None else None
            labels = [] if a.get("was_cancelled") else config.labels_from_result(a.get("result") or [])
            if item is None or not labels:
                skipped.append(key)  # a skip, an empty result, or a task we never saw
                continue
            records.append(repo.LabelRecord(item.id, labels, key, created_by=str(a.get("completed_by") or "")))
        repo.upsert_labels(session, project=project, records=records)
        if skipped:
            repo.soft_delete_labels(session, project=project, annotation_keys=skipped)
        return len(records)

    # --- training ---------------------------------------------------------------------------

    def _train_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.train_due_projects()
            except Exception:  # noqa: BLE001 - the trainer must outlive one bad project
                log.exception("trainer loop failed; retrying on the next poll")

    def train_due_projects(self, *, now: datetime | None = None) -> list[str]:
        """Retrain every project whose debounce condition holds; returns the versions trained."""
        trained = []
        with self.store.session() as s:
            projects = [(p.name, p.id) for p in repo.ls_projects(s)]
        for name, _ in projects:
            if self._due(name, now or datetime.now(timezone.utc)):
                version = self._train(name)
                if version:
                    trained.append(version)
        return trained

    def _due(self, name: str, now: datetime) -> bool:
        from annotator.training import training_lock

        with training_lock(self.settings, name) as free:
            if free:  # nobody is training this project: a 'running' row is a killed process's
                with self.store.session() as s:
                    if repo.mark_interrupted_runs(s, project=repo.get_project(s, name=name)):
                        log.warning("project %s: a training run was interrupted; its labels are pending again", name)
        with self.store.session() as s:
            p = repo.get_project(s, name=name)
            if repo.has_training_request(s, project=p):
                return True
            count, newest = repo.pending_labels(s, project=p)
            if count == 0:
                return False
            last = repo.last_training_start(s, project=p)
        quiet = (now - _aware(newest)).total_seconds() >= self.debounce_s
        piled_up = count >= self.debounce_labels and (
            last is None or (now - _aware(last)).total_seconds() >= self.min_interval_s)
        return quiet or piled_up

    def _train(self, name: str) -> str | None:
        from annotator.errors import TrainingInProgressError
        from annotator.training import retrain

        with self.store.session() as s:
            repo.take_training_requests(s, project=repo.get_project(s, name=name))
        # retrain() takes the project's training lock itself
        try:
            result = retrain(self.store, self.settings, project_name=name, encoders=self.encoders,
                             trigger="backend", progress=False)
        except TrainingInProgressError:
            return None  # another process (a worker, a CLI retrain) is training this project
        except NotEnoughLabelsError as exc:
            log.info("project %s: not training yet: %s", name, exc)
            with self.store.session() as s:  # record the attempt so the same labels do not retrigger
                p = repo.get_project(s, name=name)
                run = repo.start_training_run(s, project=p, trigger="backend")
                run.status, run.error, run.finished_at = "skipped", str(exc), utcnow()
            return None
        except Exception:
            log.exception("project %s: training failed; the active version keeps serving", name)
            return None
        self.trainings += 1
        log.info("project %s: trained %s, %s (promoted: %s; %s; chosen because: %s)", name, result.model_version,
                 result.model, result.promoted, result.reason, result.metrics.get("why"))
        if result.promoted:
            self.refresh_label_studio(name)
        return result.model_version

    def refresh_label_studio(self, name: str) -> int:
        """After a promotion: pull the project's tasks, re-score the whole pool from cached embeddings and
        push the predictions in bulk, so Label Studio's sampling and pre-labels follow the new version
        without a /predict per task. With ANNOTATOR_NEXT_BATCH_STRATEGY set, the scores also put that
        strategy's next batch first. Needs ANNOTATOR_LABEL_STUDIO_URL and _API_KEY; returns predictions sent."""
        if not (self.settings.label_studio_url and self.settings.label_studio_api_key):
            return 0
        from annotator.labelstudio.client import client_for, list_tasks, predict_missing, push_predictions, sync

        url, key = self.settings.label_studio_url, self.settings.label_studio_api_key.get_secret_value()
        with self.store.session() as s:
            p = repo.get_project(s, name=name)
            pid, schema = p.ls_project_id, p.label_config
        try:
            ls = client_for(url, key)
            tasks = list_tasks(ls, pid)
            sync(self.store, self.settings, url=url, api_key=key, ls_project_id=pid, ls=ls, tasks=tasks)
            sent = self._push_next_batch(name, url, key) if self.settings.next_batch_strategy else 0
            if sent:
                return sent
            out, version = predict_missing(self, tasks, ls_project_id=pid, schema=schema)
            push_predictions(ls, pid, out)
            ls.projects.update(id=pid, model_version=version)
            return len(out)
        except Exception:  # noqa: BLE001 - Label Studio being down must not undo a good training
            log.exception("project %s: could not refresh predictions in Label Studio", name)
            return 0

    def _push_next_batch(self, name: str, url: str, key: str) -> int:
        """Choose the next batch with the configured strategy and make Label Studio serve it first;
        returns predictions sent (0 when every item is labelled)."""
        from annotator.active.base import PoolExhaustedError
        from annotator.active.loop import select_next
        from annotator.labelstudio.client import push_next_batch

        strategy = self.settings.next_batch_strategy
        try:
            picks = select_next(self.store, self.settings, project_name=name, strategy=strategy,
                                k=self.settings.next_batch_size, encoders=self.encoders, progress=False)
        except PoolExhaustedError:
            return 0
        pushed = push_next_batch(self.store, self.settings, url=url, api_key=key, project_name=name, picks=picks,
                                 strategy=strategy, encoders=self.encoders)
        log.info("project %s: next %d tasks chosen by %s (%s)", name, len(picks), strategy, pushed["model_version"])
        return pushed["predictions"]

    # --- other routes -------------------------------------------------------------------------

    def versions(self) -> dict[str, Any]:
        with self.store.session() as s:
            out = []
            for p in repo.ls_projects(s):
                out += [v.version for v in repo.list_model_versions(s, project=p)]
        return {"versions": out}

    def search(self, *, project: Any, k: int = 10, **query) -> list[dict[str, Any]]:
        from annotator.index.cross_modal import ProjectIndex

        name = project_name_for(parse_project_id(project))
        hits = ProjectIndex(self.settings, name, self.encoders).search(self.store, k=k, **query)
        return [h.to_dict() for h in hits]


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)

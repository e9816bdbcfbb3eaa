"""The Label Studio ML backend protocol, independent of the web framework: setup, predict, webhook,
search. Nothing else: training is `annotator.trainer`'s, models and indexes are `Runtime`'s.

Webhooks only record events in the store; the trainer decides from the database when to train, so
any worker may receive any event.

/predict always answers within ``settings.predict_budget_s`` (Label Studio gives it 100 s and sends
every selected task in one request): encoding runs in a job beside the request, 128 tasks at a time
(``encode_concurrency`` jobs per process); when the budget runs out the tasks encoded so far are
answered, the others are marked pending, and the job finishes them and pushes their predictions to
Label Studio in bulk.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from annotator.config import Settings
from annotator.errors import AnnotatorError, NotAllowedError, NotFoundError, RequestTooLargeError, UnauthenticatedError
from annotator.labelstudio.label_config import LabelConfig, parse_label_config
from annotator.labelstudio.tasks import (
    annotation_keys,
    ensure_project,
    label_studio_settings,
    parse_id,
    parse_project_id,
    project_config,
    project_name_for,
    record_annotations,
    remember_access,
    upsert_tasks,
)
from annotator.media import MediaFetcher
from annotator.labelstudio.prelabels import (
    active_version,
    prepare_items,
    served_controls,
    served_version,
    task_predictions,
    transcripts_for,
)
from annotator.runtime import Runtime
from annotator.store import Store, repo
from annotator.store.models import Project, as_utc, utcnow

log = logging.getLogger("annotator.backend")
ENCODE_CHUNK = 128  # tasks encoded (and committed) at a time by a /predict job
LABEL_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
DELETE_EVENTS = {"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"}
# what an unauthenticated event may make the trainer pull from Label Studio
SYNC_EVENTS = LABEL_EVENTS | DELETE_EVENTS | {"TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED"}
TRAIN_REQUEST_COOLDOWN_S = 60.0  # Start Training again, with no new label, within this: the same run


@dataclass
class _EncodeJob:
    """Encoding for one /predict request: ``encoded`` the tasks it has been through (encoded or
    failed), ``late`` the tasks the answer could not cover."""

    ls_project_id: int
    task_ids: list[int]
    encoded: set[int] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)
    late: list[int] = field(default_factory=list)


def request_training(s, p: Project) -> str:
    """Record Label Studio's training request, coalesced: none while one is pending, and none when no
    label changed since a training that started under `TRAIN_REQUEST_COOLDOWN_S` ago (eight clicks
    on Start Training are one retrain, not eight). Returns what happened."""
    if repo.has_training_request(s, project=p):
        return "already requested"
    pending, _ = repo.pending_labels(s, project=p)
    last = repo.last_training_start(s, project=p)
    if not pending and last is not None:
        age = (utcnow() - as_utc(last)).total_seconds()
        if age < TRAIN_REQUEST_COOLDOWN_S:
            return "coalesced: no label changed since the last training"
    repo.request_training(s, project=p, trigger="label-studio")
    return "requested"


class Backend:
    """One per process, built at the app's startup over the process's store and runtime."""

    def __init__(self, settings: Settings, *, store: Store, runtime: Runtime):
        self.settings, self.store, self.runtime = settings, store, runtime
        self._encode_slots = threading.BoundedSemaphore(settings.encode_concurrency)
        self._jobs: set[threading.Thread] = set()

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait (up to ``timeout_s``) for /predict jobs still encoding in the background."""
        for job in list(self._jobs):
            job.join(timeout=timeout_s)

    def health(self) -> dict[str, Any]:
        """UP when the database answers; the model versions this process has loaded."""
        try:
            with self.store.session() as s:
                s.execute(text("SELECT 1"))
            database = "ok"
        except Exception as exc:  # noqa: BLE001 - health reports any failure, it does not raise
            database = f"unreachable: {type(exc).__name__}"
        return {"status": "UP" if database == "ok" else "DOWN", "model_class": "annotator", "database": database,
                "loaded_versions": self.runtime.loaded_versions(), "encoders": self.runtime.encoders.describe()}

    def setup(self, *, project: Any, schema: str, hostname: str | None = None, access_token: str | None = None,
              extra_params: dict | None = None) -> dict[str, Any]:
        """Register (or update) the project, its label config and how to reach Label Studio; return
        the serving model version, the controls we predict and, when some are not, which (also
        logged as a warning: the person wiring the backend sees it). Cheap: no model is loaded here."""
        pid = parse_project_id(project)
        config = parse_label_config(schema)
        served = config.explaining(self.settings.explanation_textarea)

        # behind basic auth /setup is Label Studio's own word; without it, anyone who reaches us could
        # send it, so its access is stored only for a new project, and not trusted (`remember_access`)
        authenticated = bool(self.settings.basic_auth_user)

        def register(s) -> tuple[str, bool]:
            p = ensure_project(s, pid, schema, config)
            kept = remember_access(p, hostname, access_token, trusted=authenticated)
            return active_version(s, p, config), kept

        version, kept = self.store.run(register)
        if hostname and access_token and not kept:
            log.warning("project %s: /setup without basic auth sent another Label Studio URL or token; the stored one "
                        "stays (`annotator ls connect` or basic auth change it)", pid)

        answer: dict[str, Any] = {"model_version": version, "predicted": served.predicted_controls}
        if note := served.coverage_note():
            log.warning("project %s: %s", pid, note)
            answer["not_predicted"] = list(served.ignored_controls)
        return answer

    def predict(self, *, tasks: list[dict], project: Any = None, label_config: str | None = None,
                params: dict | None = None) -> dict[str, Any]:
        """One result per task, same order; a task whose media fails gets an empty result."""
        if not tasks:
            return {"results": []}
        if len(tasks) > self.settings.max_predict_tasks:
            raise RequestTooLargeError(f"/predict got {len(tasks)} tasks, over ANNOTATOR_MAX_PREDICT_TASKS="
                                       f"{self.settings.max_predict_tasks}: select fewer tasks")
        pid = parse_project_id(project if project is not None else tasks[0].get("project"))

        def register(s) -> LabelConfig:
            p = repo.get_or_create_project(s, name=project_name_for(pid))
            schema = label_config or p.label_config
            if not schema:
                raise AnnotatorError(f"project {pid}: no label config yet (Label Studio sends it with /setup)")
            config = parse_label_config(schema)
            upsert_tasks(s, ensure_project(s, pid, schema, config), config, tasks)
            return config

        # the writes commit before encoding starts: a long /predict must not hold SQLite's write lock
        # while webhooks (which Label Studio never retries) wait for it
        config = self.store.run(register)
        job = _EncodeJob(pid, [parse_id(t["id"]) for t in tasks])
        worker = threading.Thread(target=self._run_encode_job, args=(job,), name="annotator-encode", daemon=True)
        self._jobs.add(worker)
        worker.start()
        finished = job.done.wait(timeout=self.settings.predict_budget_s)
        try:
            results, job.late = self._answer(pid, config, job)
        finally:
            job.answered.set()
        if not finished:
            log.warning("project %s: /predict budget of %.0f s spent; %d of %d task(s) answered as pending, finishing "
                        "them in the background", pid, self.settings.predict_budget_s, len(job.late), len(tasks))
        return {"results": results}

    def _answer(self, pid: int, config: LabelConfig, job: _EncodeJob) -> tuple[list[dict[str, Any]], list[int]]:
        """Results (in task order) from what is encoded now, and the tasks still waiting for encoding."""
        # taken before scoring: a chunk the job finishes meanwhile is scored as pending, not as final
        task_ids, finished, encoded = job.task_ids, job.done.is_set(), set(job.encoded)
        with self.store.session() as s:
            p = repo.get_project(s, name=project_name_for(pid))
            items = repo.items_by_task_ids(s, project=p, task_ids=task_ids)
            ordered = [items[tid] for tid in task_ids]
            served = served_controls(s, self.runtime, p, config)
            predictions = task_predictions(ordered, served, encoders=self.runtime.encoders, config=config,
                                           transcripts=transcripts_for(s, ordered, config,
                                                                       encoders=self.runtime.encoders),
                                           explanation_textarea=self.settings.explanation_textarea)
        version = served_version(served)
        results, late = [], []
        for it, pred in zip(ordered, predictions):
            if pred is not None:
                results.append({**pred, "model_version": version})
            elif not finished and it.ls_task_id not in encoded:
                late.append(it.ls_task_id)
                results.append({"result": [], "score": 0.0, "model_version": f"{version}-pending"})
            else:  # encoded, failed, or nothing the model can use: an empty answer is the final one
                results.append({"result": [], "score": 0.0, "model_version": version})
        return results, late

    def _run_encode_job(self, job: _EncodeJob) -> None:
        try:
            for start in range(0, len(job.task_ids), ENCODE_CHUNK):
                chunk = job.task_ids[start:start + ENCODE_CHUNK]
                with self._encode_slots, self.store.session() as s:  # each chunk's content hashes commit
                    p = repo.get_project(s, name=project_name_for(job.ls_project_id))
                    items = list(repo.items_by_task_ids(s, project=p, task_ids=chunk).values())
                    settings = label_studio_settings(self.settings, p)
                    with MediaFetcher(settings) as fetcher:
                        # every modality, not only the model's: the index, the next model choice and
                        # active learning read these vectors too; and transcripts where the config
                        # has a TextArea on audio (or no text)
                        report = prepare_items(s, items, project_config(p), settings=settings,
                                               encoders=self.runtime.encoders, fetcher=fetcher)
                job.encoded.update(chunk)
                for f in report.failed:
                    log.warning("task %s: %s", f["id"], f["error"])
        except Exception:  # noqa: BLE001 - the request still answers from what is ready
            log.exception("project %s: encoding for /predict failed", job.ls_project_id)
        finally:
            job.done.set()
        try:
            job.answered.wait()
            if job.late:
                self._publish_late(job)
        finally:
            self._jobs.discard(threading.current_thread())

    def _publish_late(self, job: _EncodeJob) -> None:
        """Push the predictions of tasks answered as pending, once they are encoded."""
        from annotator.labelstudio.client import client_for
        from annotator.labelstudio.sync import publish_predictions

        name = project_name_for(job.ls_project_id)
        with self.store.session() as s:
            settings = label_studio_settings(self.settings, repo.get_project(s, name=name))
        if not (settings.label_studio_url and settings.label_studio_api_key):
            log.info("project %s: %d pending task(s) encoded; Label Studio is not connected, so they get their "
                     "predictions when it asks again", job.ls_project_id, len(job.late))
            return
        try:
            ls = client_for(settings.label_studio_url, settings.label_studio_api_key.get_secret_value())
            sent, version = publish_predictions(self.store, self.runtime, ls, project_name=name, task_ids=job.late)
            log.info("project %s: pushed %d prediction(s) of %s for tasks answered as pending", job.ls_project_id,
                     sent, version)
        except Exception:  # noqa: BLE001 - Label Studio asks again for tasks without a prediction
            log.exception("project %s: could not push the pending tasks' predictions", job.ls_project_id)

    def webhook(self, payload: dict[str, Any], *, secret: str | None = None,
                authenticated: bool = False) -> dict[str, Any]:
        """Record the event and return at once; training happens in the trainer.

        Trusted events, those carrying the project's webhook ``secret`` (or ``authenticated`` by
        basic auth: Label Studio adds it to START_TRAINING), are applied from the payload, as Label
        Studio's own word. Any other event is a hint: for a project already registered (by /setup
        or `ls connect`) with a way to reach Label Studio, it asks the trainer to pull the project
        from Label Studio's API, which is what gets stored; it never creates a project, stores a
        label or changes a label config itself. A wrong secret is refused.
        """
        action = payload.get("action")
        if not isinstance(action, str):
            raise AnnotatorError("webhook payload has no 'action'")
        project_obj = payload.get("project")
        if not isinstance(project_obj, dict) or "id" not in project_obj:
            return {"status": "ignored", "action": action, "reason": "no project in payload"}
        pid = parse_project_id(project_obj["id"])
        if not (authenticated or self._secret_matches(pid, secret)):
            return self.store.run(lambda s: self._hint(s, action, pid))
        schema = project_obj.get("label_config")
        if schema is not None and not isinstance(schema, str):
            raise AnnotatorError("webhook project's label_config must be a string")
        config = parse_label_config(schema) if schema else None
        try:
            return self.store.run(lambda s: self._apply_event(s, action, pid, schema, config, payload))
        except AnnotatorError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a payload of the wrong shape
            raise AnnotatorError(f"malformed {action} payload: {type(exc).__name__}: {exc}") from None

    def _secret_matches(self, pid: int, secret: str | None) -> bool:
        """Whether ``secret`` is the project's webhook secret (compared in constant time); a secret
        that is given but wrong is refused rather than treated as absent."""
        if secret is None:
            return False
        expected = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
        if expected is None:
            with self.store.session() as s:
                p = repo.find_project(s, name=project_name_for(pid))
                expected = p.webhook_secret if p is not None else None
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise UnauthenticatedError(f"webhook for project {pid}: wrong X-Annotator-Secret")
        return True

    def _hint(self, s, action: str, pid: int) -> dict[str, Any]:
        """An unauthenticated event: a training request, or a reason to pull the project from Label
        Studio; nothing from its payload is stored."""
        p = repo.find_project(s, name=project_name_for(pid))
        if p is None:
            raise NotAllowedError(f"unauthenticated webhook for unknown project {pid}: Label Studio's /setup or "
                                  "`annotator ls connect` registers a project first")
        if action == "START_TRAINING":
            if self.settings.basic_auth_user:  # Label Studio sends its training request with basic auth
                raise NotAllowedError(f"START_TRAINING for project {pid} without basic auth")
            return {"status": "ok", "action": action, "training": request_training(s, p)}
        if action not in SYNC_EVENTS:
            return {"status": "ignored", "action": action}
        ls = label_studio_settings(self.settings, p)
        if not (ls.label_studio_url and ls.label_studio_api_key):
            raise NotAllowedError(
                f"unauthenticated {action} for project {pid}, and no Label Studio access to check it against: "
                "connect the project with `annotator ls connect` (it gives Label Studio a webhook secret) or set "
                "ANNOTATOR_WEBHOOK_SECRET")
        p.sync_requested_at = utcnow()  # the newest request: a sync that began before it runs again
        return {"status": "queued", "action": action, "sync": "requested"}

    @staticmethod
    def _apply_event(s, action: str, pid: int, schema: str | None, config: LabelConfig | None,
                     payload: dict[str, Any]) -> dict[str, Any]:
        """One trusted webhook's writes, in one transaction; idempotent, so a lost insert race can rerun it."""
        p = ensure_project(s, pid, schema, config)
        if action in LABEL_EVENTS:
            annotations = payload.get("annotation")
            tasks = payload.get("task")
            annotations = annotations if isinstance(annotations, list) else [annotations]
            tasks = tasks if isinstance(tasks, list) else [tasks]
            n = record_annotations(s, p, config, [a for a in annotations if a], [t for t in tasks if t])
            return {"status": "ok", "action": action, "recorded": n}
        if action in DELETE_EVENTS:
            raw = payload.get("annotations") or ([payload["annotation"]] if payload.get("annotation") else [])
            config = config or project_config(p)
            keys = [key for a in raw if isinstance(a, dict) and "id" in a
                    for key in annotation_keys(parse_id(a["id"], "annotation"), config).values()]
            return {"status": "ok", "action": action, "deleted": repo.soft_delete_labels(s, project=p, annotation_keys=keys)}
        if action == "START_TRAINING":
            return {"status": "ok", "action": action, "training": request_training(s, p)}
        if action == "TASKS_DELETED":
            task_ids = [parse_id(t["id"]) for t in payload.get("tasks") or [] if isinstance(t, dict) and "id" in t]
            gone = repo.items_by_task_ids(s, project=p, task_ids=task_ids)
            repo.delete_items(s, project=p, external_ids=[it.external_id for it in gone.values()])
            return {"status": "ok", "action": action, "deleted": len(gone)}
        return {"status": "ignored", "action": action}

    def versions(self) -> dict[str, Any]:
        """Label Studio reads ``versions``; ``stopping`` says, per project, whether more labels are
        likely to change the active model (`annotator.active.stopping`)."""
        with self.store.session() as s:
            out, stopping = [], {}
            for p in repo.ls_projects(s):
                out += [v.version for v in repo.list_model_versions(s, project=p)]
                active = repo.active_model_version(s, project=p)
                if active is not None and active.metrics.get("stopping"):
                    stopping[p.name] = {"version": active.version, **active.metrics["stopping"]}
        return {"versions": out, "stopping": stopping}

    def search(self, *, project: Any, k: int = 10, to_labelstudio: bool = False,
               **query) -> list[dict[str, Any]] | dict[str, Any]:
        """The hits; with ``to_labelstudio``, ``{"hits", "label_studio"}``: the hits also become the
        project's search tab in Label Studio (reached as /setup said), most similar first."""
        pid = parse_project_id(project)
        name = project_name_for(pid)
        with self.store.session() as s:  # named alone: a caller of /search learns nothing of other projects
            if repo.find_project(s, name=name) is None:
                raise NotFoundError(f"project {pid} is not registered: Label Studio's /setup or `annotator ls connect` "
                                    "registers it")
        hits = [h.to_dict() for h in self.runtime.project_index(name).search(self.store, k=k, **query)]
        if not to_labelstudio:
            return hits
        from annotator.labelstudio.sync import push_search_tab

        with self.store.session() as s:
            settings = label_studio_settings(self.settings, repo.get_project(s, name=name))
        if not (settings.label_studio_url and settings.label_studio_api_key):
            raise NotAllowedError(f"project {name}: no way to reach Label Studio (its /setup sent no access token, and "
                                  "LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set)")
        what = next(f"{key} {value}" for key, value in query.items() if key in ("text", "image", "audio", "item"))
        tab = push_search_tab(self.store, url=settings.label_studio_url, project_name=name, hits=hits, query=what,
                              api_key=settings.label_studio_api_key.get_secret_value())
        return {"hits": hits, "label_studio": tab}

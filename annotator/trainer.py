"""Debounced training for the backend, and refreshing Label Studio after a promotion.

Training is DB-driven: webhooks only record labels; the trainer refits a project's model when labels
have been quiet for ``debounce_s`` seconds, or when ``debounce_labels`` changes piled up and the last
training started at least ``min_interval_s`` ago, or when Label Studio asked (START_TRAINING).
Every worker runs a trainer, but a project's training lock (`training.training_lock`: an advisory
lock on Postgres, a file lock on SQLite) lets only one train it at a time, and the decision is made
again under the lock, so one burst of labels trains once across the deployment. Because the
decision reads the database, events missed by one process (or before a crash) are not lost.

A training is a refit (`training.retrain` in ``refit`` mode: the chosen configuration fitted on every
label, serving in seconds); when a refit finds that a model search could change the answer, the
search runs in a background thread at a lower priority (`training.search_in_background`), and the
refits go on serving meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from annotator.active.registry import get_strategy
from annotator.config import Settings
from annotator.errors import ConfigError, NotEnoughLabelsError, UnknownNameError
from annotator.fusion.selection import AUTO, Candidate
from annotator.labelstudio.tasks import label_studio_settings
from annotator.runtime import Runtime
from annotator.store import Store, repo
from annotator.store.locks import try_lock
from annotator.store.models import as_utc, utcnow
from annotator.parallel import lower_thread_priority
from annotator.training import BACKGROUND_NICE, REFIT, retrain, score_refit, search_in_background, training_lock

log = logging.getLogger("annotator.trainer")
SYNC_RETRY_S = 30.0  # after a failed pull from Label Studio
SYNC_MIN_INTERVAL_S = 5.0  # between pulls of one project
FULL_PULL_EVERY_S = 600.0  # pulls in between list only the tasks changed since the last one; a full one sees deletions
PULL_OVERLAP_S = 5.0  # an incremental pull starts this long before the newest change seen: a change committed late is not missed


class OneAtATime:
    """Runs ``work(name)`` in a background thread, one at a time per name: asked again while it
    runs, it runs once more after (many requests, one extra run). A failure is logged."""

    def __init__(self, work, what: str, stop: threading.Event):
        self._work, self._what, self._stop = work, what, stop
        self._threads: dict[str, threading.Thread] = {}
        self._again: set[str] = set()
        self._guard = threading.Lock()

    def request(self, name: str) -> None:
        with self._guard:
            if name in self._threads:
                self._again.add(name)
                return
            if self._stop.is_set():
                return
            thread = threading.Thread(target=self._run, args=(name,), name=f"annotator-{self._what}-{name}",
                                      daemon=True)
            self._threads[name] = thread
        thread.start()

    def running(self, name: str) -> bool:
        with self._guard:
            return name in self._threads

    def join(self, timeout: float) -> None:
        with self._guard:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=timeout)

    def _run(self, name: str) -> None:
        while True:
            try:
                self._work(name)
            except Exception:  # noqa: BLE001 - background work must not end the trainer
                log.exception("project %s: %s failed; the serving version is unaffected", name, self._what)
            with self._guard:
                if name not in self._again or self._stop.is_set():
                    del self._threads[name]
                    return
                self._again.discard(name)


class Trainer:
    """One per process; `start` runs it in a daemon thread. Parameters are the debounce policy (a
    refit takes seconds, so the quiet period is short), whether model searches run in the
    background (default: ``settings.background_search``), and ``mode``: ``search`` makes every
    training a full search, as before refits (benchmarks compare with it)."""

    def __init__(self, settings: Settings, *, store: Store, runtime: Runtime, debounce_s: float = 2.0,
                 debounce_labels: int = 100, min_interval_s: float = 60.0, poll_s: float = 0.5,
                 background_search: bool | None = None, mode: str = REFIT):
        if settings.model != AUTO:  # a bad name fails at startup, not after the first training
            try:
                Candidate.parse(settings.model)
            except UnknownNameError as exc:
                raise ConfigError(f"ANNOTATOR_MODEL: {exc}") from None
        if settings.next_batch_strategy:
            try:
                get_strategy(settings.next_batch_strategy)
            except UnknownNameError as exc:
                raise ConfigError(f"ANNOTATOR_NEXT_BATCH_STRATEGY: {exc}") from None
        self.settings, self.store, self.runtime = settings, store, runtime
        self.debounce_s, self.debounce_labels = debounce_s, debounce_labels
        self.min_interval_s, self.poll_s = min_interval_s, poll_s
        self.background_search = settings.background_search if background_search is None else background_search
        self.mode = mode
        self.trainings = 0
        self._sync_after: dict[str, float] = {}
        self._pulled: dict[str, tuple[datetime | None, float]] = {}  # newest change seen, when the last full pull ran
        self._stop = threading.Event()
        # off the refit's path, one thread per project each: pushing predictions to Label Studio
        # (seconds for a large pool), and scoring refits then searching (tens of seconds)
        self._refresher = OneAtATime(self.refresh_label_studio, "refresh", self._stop)
        self._background = OneAtATime(self._background_work, "search", self._stop)
        self._thread: threading.Thread | None = None

    def start(self) -> Trainer:
        self._thread = threading.Thread(target=self._loop, name="annotator-trainer", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.wait(timeout_s=60)

    def wait(self, timeout_s: float = 60) -> None:
        """Wait (up to ``timeout_s`` per thread) for the background work: pushes to Label Studio,
        scoring refits, model searches."""
        self._refresher.join(timeout=timeout_s)
        self._background.join(timeout=timeout_s)

    def searching(self, name: str) -> bool:
        """Whether this process is scoring refits of project ``name`` or searching its model."""
        return self._background.running(name)

    def _background_work(self, name: str) -> None:
        """After refits, at a lower priority: score the newest refit of each control
        (`training.score_refit`), then run the model search for the controls where it could change
        the answer (`training.search_in_background`)."""
        lower_thread_priority(BACKGROUND_NICE)
        with self.store.session() as s:
            project = repo.get_project(s, name=name)
            settings = label_studio_settings(self.settings, project)
            newest = {}
            for mv in repo.list_model_versions(s, project=project):
                newest[mv.control] = (mv.version, dict(mv.metrics or {}))
        due = []
        for control, (version, metrics) in newest.items():
            scored = score_refit(self.store, settings, project_name=name, version=version,
                                 encoders=self.runtime.encoders, nice=BACKGROUND_NICE)
            if (scored or metrics).get("search_due"):
                due.append(control)
        if due and self.background_search:
            log.info("project %s: model search in the background for %s", name,
                     ", ".join(c or "the primary control" for c in due))
            for r in search_in_background(self.store, settings, project_name=name, controls=due,
                                          encoders=self.runtime.encoders) or []:
                log.info("project %s%s: model search trained %s, %s (promoted: %s; %s)", name,
                         f", control {r.control}" if r.control else "", r.model_version, r.model, r.promoted, r.reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.train_due_projects()
            except Exception:  # noqa: BLE001 - the trainer must outlive one bad project
                log.exception("trainer loop failed; retrying on the next poll")

    def train_due_projects(self, *, now: datetime | None = None) -> list[str]:
        """Pull the projects unauthenticated webhooks asked about, then retrain every project whose
        debounce condition holds; returns the versions trained."""
        now = now or datetime.now(timezone.utc)
        self.sync_requested_projects()
        with self.store.session() as s:
            names = [p.name for p in repo.ls_projects(s)]
        trained = []
        for name in names:
            version = self._train_if_due(name, now)
            if version:
                trained.append(version)
        return trained

    def sync_requested_projects(self) -> list[str]:
        """Pull each project an unauthenticated webhook named from Label Studio's API (with its stored
        token): what Label Studio says is stored, not what the event said. Many events make one pull,
        at most one per `SYNC_MIN_INTERVAL_S`; a project whose pull failed waits `SYNC_RETRY_S`.
        Pulls list only the tasks changed since the newest change the last one saw (a stream of
        events on a project of 100k tasks made one full listing every 5 s); one in
        `FULL_PULL_EVERY_S`, and the first of each process, lists every task, so deleted tasks go
        too. Returns projects pulled."""
        from annotator.labelstudio.sync import sync

        with self.store.session() as s:
            requested = [(p.name, p.sync_requested_at, p.ls_project_id, label_studio_settings(self.settings, p))
                         for p in repo.projects_to_sync(s)]
        pulled = []
        for name, requested_at, pid, settings in requested:
            if time.monotonic() < self._sync_after.get(name, 0.0) or not settings.label_studio_api_key:
                continue
            with try_lock(self.store.engine, f"sync:{name}") as free:
                if not free:
                    continue  # another worker is pulling it
                newest, full_at = self._pulled.get(name, (None, -FULL_PULL_EVERY_S))
                full = newest is None or time.monotonic() - full_at >= FULL_PULL_EVERY_S
                try:
                    result = sync(self.store, url=settings.label_studio_url,
                                  api_key=settings.label_studio_api_key.get_secret_value(), ls_project_id=pid,
                                  updated_after=None if full else newest - timedelta(seconds=PULL_OVERLAP_S))
                except Exception:  # noqa: BLE001 - Label Studio down: the request stays, retried later
                    log.exception("project %s: could not pull it from Label Studio; retrying in %.0f s", name,
                                  SYNC_RETRY_S)
                    self._sync_after[name] = time.monotonic() + SYNC_RETRY_S
                    continue
                seen = [t for t in (newest, result["last_update"]) if t is not None]
                self._pulled[name] = (max(seen, default=None), time.monotonic() if full else full_at)
                with self.store.session() as s:
                    repo.sync_done(s, project=repo.get_project(s, name=name), requested_at=requested_at)
            self._sync_after[name] = time.monotonic() + SYNC_MIN_INTERVAL_S
            pulled.append(name)
        return pulled

    def _due(self, name: str, now: datetime) -> bool:
        with self.store.session() as s:
            p = repo.get_project(s, name=name)
            if repo.has_training_request(s, project=p):
                return True
            count, newest = repo.pending_labels(s, project=p)
            if count == 0:
                return False
            last = repo.last_training_start(s, project=p)
        quiet = (now - as_utc(newest)).total_seconds() >= self.debounce_s
        piled_up = count >= self.debounce_labels and (
            last is None or (now - as_utc(last)).total_seconds() >= self.min_interval_s)
        return quiet or piled_up

    def _train_if_due(self, name: str, now: datetime) -> str | None:
        if not self._due(name, now):  # a plain read first: most polls end here, without taking a lock
            return None
        with training_lock(self.store, name) as free:
            if not free:
                return None  # another worker (or a CLI retrain) is training this project
            with self.store.session() as s:  # nobody is training it: a 'running' row is a killed process's
                if repo.mark_interrupted_runs(s, project=repo.get_project(s, name=name)):
                    log.warning("project %s: a training run was interrupted; its labels are pending again", name)
            if not self._due(name, now):  # decided under the lock: another worker may just have trained
                return None
            return self._train(name)

    def _train(self, name: str) -> str | None:
        """Train once. Label Studio's training requests are marked handled when the run has ended
        (succeeded, skipped or failed), never before: a process killed mid-training leaves them
        pending, and the next trainer honours them."""
        with self.store.session() as s:
            settings = label_studio_settings(self.settings, repo.get_project(s, name=name))
        try:
            result = retrain(self.store, settings, project_name=name, head=settings.model, mode=self.mode, score=False,
                             encoders=self.runtime.encoders, trigger="backend", progress=False, lock_held=True)
        except NotEnoughLabelsError as exc:
            log.info("project %s: not training yet: %s", name, exc)
            with self.store.session() as s:  # record the attempt so the same labels do not retrigger
                project = repo.get_project(s, name=name)
                run = repo.start_training_run(s, project=project, trigger="backend")
                run.status, run.error, run.finished_at = "skipped", str(exc), utcnow()
                repo.take_training_requests(s, project=project)
            return None
        except Exception:
            log.exception("project %s: training failed; the active version keeps serving", name)
            self._requests_handled(name)  # retrying the same failure every second would not fix it
            return None
        self._requests_handled(name)
        self.trainings += 1
        log.info("project %s: %s %s, %s (promoted: %s; %s; %s)", name, result.training, result.model_version,
                 result.model, result.promoted, result.reason, result.metrics.get("why"))
        for sub in result.controls:
            log.info("project %s, control %s: %s", name, sub.control,
                     f"trained {sub.model_version}, {sub.model} (promoted: {sub.promoted}; {sub.reason})"
                     if sub.model_version else f"not trained: {sub.reason}")
        if self.mode == REFIT:
            self._background.request(name)
        if result.any_promoted:
            self._refresher.request(name)
        return result.model_version

    def _requests_handled(self, name: str) -> None:
        with self.store.session() as s:
            repo.take_training_requests(s, project=repo.get_project(s, name=name))

    def refresh_label_studio(self, name: str) -> int:
        """After a promotion: pull the project's tasks and annotations, encode the tasks never encoded
        yet, then push the new version's predictions for the whole pool in bulk from cached vectors,
        so Label Studio's sampling and pre-labels follow it without a /predict per task. With ANNOTATOR_NEXT_BATCH_STRATEGY set,
        the scores also put that strategy's next batch first. Needs Label Studio's URL and a key
        (configured, or stored by /setup); returns predictions sent."""
        from annotator.labelstudio.client import client_for, list_tasks
        from annotator.labelstudio.prelabels import prepare_project
        from annotator.labelstudio.sync import publish_predictions, sync

        with self.store.session() as s:
            p = repo.get_project(s, name=name)
            settings, pid = label_studio_settings(self.settings, p), p.ls_project_id
        if not (settings.label_studio_url and settings.label_studio_api_key):
            return 0
        url, key = settings.label_studio_url, settings.label_studio_api_key.get_secret_value()
        try:
            ls = client_for(url, key)
            listed_at = utcnow()
            tasks = list_tasks(ls, pid)
            sync(self.store, url=url, api_key=key, ls_project_id=pid, ls=ls, tasks=tasks, listed_at=listed_at)
            prepare_project(self.store, settings, project_name=name, encoders=self.runtime.encoders)
            if settings.next_batch_strategy:
                sent = self._push_next_batch(name, settings)
                if sent:
                    return sent
            return publish_predictions(self.store, self.runtime, ls, project_name=name, tasks=tasks)[0]
        except Exception:  # noqa: BLE001 - Label Studio being down must not undo a good training
            log.exception("project %s: could not refresh predictions in Label Studio", name)
            return 0

    def _push_next_batch(self, name: str, settings: Settings) -> int:
        """Choose the next batch with the configured strategy and make Label Studio serve it first;
        returns predictions sent (0 when every item is labelled). ``settings`` reach the project's
        Label Studio (media of items not encoded yet are fetched with them)."""
        from annotator.active.base import PoolExhaustedError
        from annotator.active.selection import select_next
        from annotator.labelstudio.sync import push_next_batch

        strategy = settings.next_batch_strategy
        try:
            picks = select_next(self.store, settings, project_name=name, strategy=strategy,
                                k=settings.next_batch_size, runtime=self.runtime, progress=False)
        except PoolExhaustedError:
            return 0
        pushed = push_next_batch(self.store, self.runtime, url=settings.label_studio_url,
                                 api_key=settings.label_studio_api_key.get_secret_value(), project_name=name,
                                 picks=picks, strategy=strategy)
        log.info("project %s: next %d tasks chosen by %s (%s)", name, len(picks), strategy, pushed["model_version"])
        return pushed["predictions"]

"""retrain → choose the model on the project's labels → version → promote if not worse.

The model is chosen per project (`ModelSearch`): candidates are cross-validated on the same folds of
the project's labels and the winner is refitted on every label, so the served model learns from all
of them. Promotion compares like with like: the active version's configuration is scored on the
same folds of today's labels, not by a figure recorded when it had fewer.

Training has two speeds, since a correction should reach the next pre-label in seconds and a search
takes tens of seconds: a refit fits the chosen configuration on every label and serves it at once;
the search runs again, in the background, only when it could change the answer (`search_due`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator.active.stopping import agreement, label_slope, stop_set, stopping_signal
from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.encoders.base import is_parts_key, resolve_device
from annotator.errors import ConfigError, NotEnoughLabelsError, TrainingInProgressError, UnknownNameError
from annotator.fusion.base import inputs_for
from annotator.fusion.heads import COATTENTION
from annotator.fusion.classifier import FusionClassifier
from annotator.fusion.linear import LinearClassifier
from annotator.fusion.selection import (AUTO, KERNEL, LINEAR, NO_SELF_TRAINING, Candidate, ModelSearch, SearchRecord,
                                        finite_or_none, search_due)
from annotator.media import MediaFetcher
from annotator.encoders.registry import Encoders
from annotator.parallel import lower_thread_priority
from annotator.store import Store, repo
from annotator.store.locks import try_lock
from annotator.store.models import ModelVersion, TrainingRun, utcnow
from annotator.versions import load_version, prune_versions, save_version, version_dir

MAX_UNLABELLED = 20_000
SEARCH, REFIT = "search", "refit"  # the two speeds of training (`retrain`'s ``mode``)
TRAINING_MODES = (SEARCH, REFIT)
BACKGROUND_NICE = 10  # how much lower a background search runs than the refits and predictions people wait for
RECORD_WAIT_S = 600.0  # how long a background search waits for the training lock to record its result


@dataclass
class RetrainResult:
    model_version: str
    promoted: bool
    metrics: dict[str, Any]
    n_labels: int
    previous: dict[str, Any] | None = None
    reason: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)
    control: str | None = None  # None: the primary control
    controls: list[RetrainResult] = field(default_factory=list)  # the project's other controls, trained after it

    @property
    def any_promoted(self) -> bool:
        """Whether this round changed what serves any control."""
        return self.promoted or any(c.promoted for c in self.controls)

    @property
    def training(self) -> str:
        """``search`` (the model was chosen) or ``refit`` (the serving configuration, fitted again)."""
        return self.metrics.get("training", SEARCH)

    @property
    def search_due(self) -> str | None:
        """After a refit: why a model search could now change the answer (None: not due)."""
        return self.metrics.get("search_due")

    @property
    def model(self) -> str:
        """The chosen candidate's name (e.g. ``logreg`` or ``attention [text+image] +self-training``)."""
        return self.metrics.get("chosen", "")

    def to_dict(self) -> dict[str, Any]:
        keys = ("accuracy", "macro_f1", "ece")
        out = {"model_version": self.model_version, "promoted": self.promoted,
               "metrics": {k: self.metrics.get(k) for k in keys}, "n_labels": self.n_labels,
               "stopping": self.metrics.get("stopping"),
               "model": self.model, "training": self.training, "search_due": self.search_due,
               "why": self.metrics.get("why"), "candidates": self.metrics.get("candidates", []),
               "details": {"metrics": self.metrics, "previous": self.previous, "reason": self.reason,
                           "skipped": self.skipped}}
        if self.control is None:
            out["controls"] = {c.control: c.to_dict() for c in self.controls}
        return out


def unlabelled_features(items: Sequence, encoders: Encoders, modalities: Sequence[str],
                        limit: int = MAX_UNLABELLED) -> dict[str, np.ndarray] | None:
    """Cached vectors of unlabelled items for self-training, or None when there are none.

    Nothing is encoded here (the backend encodes items when it predicts them), and a large pool
    is sampled down to ``limit`` items: pseudo-labels are capped (the classifier's
    ``max_pseudo_labels``), so more candidates add memory, not better picks.
    """
    if len(items) > limit:
        rows = np.sort(np.random.default_rng(0).choice(len(items), limit, replace=False))
        items = [items[i] for i in rows]
    features = load_features(items, encoders=encoders, modalities=modalities)
    if not features:
        return None
    usable = usable_rows(features, len(items))
    return {m: a[usable] for m, a in features.items()} if usable.any() else None


def training_lock(store: Store, project_name: str):
    """Non-blocking per-project lock across processes (and hosts, on Postgres): a context manager
    yielding whether it was acquired. Whoever holds it is the only one training the project, so any
    run still marked 'running' in the database while it is free belongs to a process that died."""
    return try_lock(store.engine, f"train:{project_name}")


def retrain(store: Store, settings: Settings, *, project_name: str, head: str = AUTO, force: bool = False,
            trigger: str = "cli", encoders: Encoders | None = None, params: dict[str, Any] | None = None,
            progress: bool = True, lock_held: bool = False, mode: str = SEARCH, score: bool = True) -> RetrainResult:
    """Train the project's model on its labels and promote it if it is not worse; then the same for
    each other control the project has labels for (each `<Choices>` and `<Taxonomy>` of a Label
    Studio config has its own model and versions, over the same cached vectors). The result is the
    primary control's, with the others' in ``controls``; a control with too few labels is skipped
    with the reason, and the primary's lack of labels is an error.

    Two speeds (``mode``). ``search`` chooses the model: ``head="auto"`` compares the candidates of
    `ModelSearch` (fusion heads, logistic regression, single modalities) by cross-validated
    macro-F1; a model name (``attention``, ``logreg``, ``concat [text]``…) forces that one.
    Self-training on the project's unlabelled items with cached vectors is kept where the same
    folds say it helps (``settings.self_training``). ``refit`` fits the configuration the active
    version serves (the forced one, or logistic regression before any search) on every label and
    serves it at once — the same configuration scored on the same folds is its own reference —
    then scores it, and records in ``search_due`` whether a search could now change the answer
    (`search_due`; the backend runs it in the background, `search_in_background`). ``score=False``
    leaves the scoring to `score_refit` (the backend's background thread), so the next correction's
    refit does not wait for it. ``params`` go to the fusion heads.

    Not worse means: the chosen model's cross-validated macro-F1 is at least the active version's
    configuration's on the same folds, less one standard error (``force`` promotes regardless). A
    failure at any step leaves the active version serving and records the error on the training
    run. Only one process trains a project at a time; another attempt raises
    `TrainingInProgressError`. ``lock_held``: the caller already holds `training_lock` (the
    trainer does, to check under it that training is still due).
    """
    if mode not in TRAINING_MODES:
        raise UnknownNameError("training mode", mode, TRAINING_MODES)
    if head != AUTO and Candidate.parse(head).model == COATTENTION and not settings.parts:  # fail fast on a bad name
        raise ConfigError("the coattention head reads part-level features, which are off: set ANNOTATOR_PARTS=true "
                          "and run `annotator embed` (it adds them to the cache) before training it")
    kwargs = dict(head=head, force=force, trigger=trigger, encoders=encoders, params=params, progress=progress,
                  mode=mode, score=score)
    if lock_held:
        return _retrain_locked(store, settings, project_name=project_name, **kwargs)
    with training_lock(store, project_name) as acquired:
        if not acquired:
            raise TrainingInProgressError(f"project {project_name!r} is being trained by another process; try again later")
        with store.session() as s:
            repo.mark_interrupted_runs(s, project=repo.get_project(s, name=project_name))
        return _retrain_locked(store, settings, project_name=project_name, **kwargs)


def search_in_background(store: Store, settings: Settings, *, project_name: str, controls: Sequence[str | None],
                         encoders: Encoders | None = None, trigger: str = "backend") -> list[RetrainResult] | None:
    """The full model search for ``controls`` (None: the primary), run while refits go on serving:
    it holds only the project's search lock (None when another search holds it) and takes the
    training lock just to record its versions, so a refit never waits for a search. Its fold
    workers and this thread run at a lower priority. A winner is promoted only if it beats the
    configuration that served when the search began on the same folds, and that configuration
    still serves; a promotion asks for a refit, so the labels that came during the search are used."""
    encoders = encoders or Encoders(settings)
    with try_lock(store.engine, f"search:{project_name}") as free:
        if not free:
            return None
        lower_thread_priority(BACKGROUND_NICE)
        started, t0 = utcnow(), time.perf_counter()
        results, timings = [], {}
        try:
            for control in controls:
                try:
                    result, sub_timings = _train_control(
                        store, settings, project_name, control, mode=SEARCH, head=AUTO, force=False,
                        encoders=encoders, params=None, progress=False, background=True)
                except NotEnoughLabelsError:
                    continue
                results.append(result)
                timings.update({f"{control or ''}.{k}".lstrip("."): v for k, v in sub_timings.items()})
        except BaseException as exc:
            _record_background_run(store, project_name, trigger, started, "search failed",
                                   error=f"{type(exc).__name__}: {exc}")
            raise
        _record_background_run(store, project_name, trigger, started, "searched",
                               version=results[0].model_version if results else None,
                               timings={**timings, "total_s": time.perf_counter() - t0},
                               request_refit=any(r.promoted for r in results))
        return results


def _record_background_run(store: Store, project_name: str, trigger: str, started, status: str, *,
                           version: str | None = None, error: str | None = None, timings=None,
                           request_refit: bool = False) -> None:
    """A background search's training run, written when it ends: while it runs it holds no
    training lock, so a 'running' row would read as a killed process's to the next refit. Its
    statuses ('searched', 'search failed') consume no labels (`repo.pending_labels`): the refit
    serving when it ends may not have seen the labels it read, and a promotion asks for a refit."""
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        s.add(TrainingRun(project_id=project.id, trigger=f"{trigger} search", status=status, started_at=started,
                          finished_at=utcnow(), model_version=version, error=error, timings=timings or {}))
        if request_refit:
            repo.request_training(s, project=project, trigger="search promoted")


@contextmanager
def _training_lock_waiting(store: Store, project_name: str, timeout_s: float = RECORD_WAIT_S):
    """The project's training lock, waited for (refits hold it for seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with training_lock(store, project_name) as free:
            if free:
                yield
                return
        if time.monotonic() > deadline:
            raise TrainingInProgressError(f"project {project_name!r}: the training lock stayed taken for "
                                          f"{timeout_s:.0f} s; the search's result was not recorded")
        time.sleep(0.2)


def _retrain_locked(store: Store, settings: Settings, *, project_name: str, head: str, force: bool, trigger: str,
                    encoders: Encoders | None, params: dict[str, Any] | None, progress: bool,
                    mode: str, score: bool) -> RetrainResult:
    encoders = encoders or Encoders(settings)
    t0 = time.perf_counter()
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        run_id = repo.start_training_run(s, project=project, trigger=trigger).id
    try:
        kwargs = dict(mode=mode, head=head, force=force, encoders=encoders, params=params, progress=progress,
                      score=score)
        result, timings = _train_control(store, settings, project_name, None, **kwargs)
        with store.session() as s:
            controls = repo.label_controls(s, project=repo.get_project(s, name=project_name))
        for control in controls:
            try:
                sub, sub_timings = _train_control(store, settings, project_name, control, **kwargs)
            except NotEnoughLabelsError as exc:
                sub, sub_timings = RetrainResult("", False, {}, 0, reason=str(exc), control=control), {}
            result.controls.append(sub)
            timings.update({f"{control}.{k}": v for k, v in sub_timings.items()})
        with store.session() as s:
            run = s.get(repo.TrainingRun, run_id)
            run.status, run.model_version, run.finished_at = "succeeded", result.model_version, utcnow()
            run.timings = {**timings, "total_s": time.perf_counter() - t0}
        with store.session() as s:  # after the commit: a failed prune never costs the new versions
            prune_versions(settings, s, repo.get_project(s, name=project_name))
        return result
    except BaseException as exc:
        stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))  # Ctrl-C, SIGTERM: not the run's fault
        with store.session() as s:
            run = s.get(repo.TrainingRun, run_id)
            # an interrupted run consumed no labels: they stay pending, and the next training takes them
            run.status, run.finished_at = "interrupted" if stopped else "failed", utcnow()
            run.error = ("stopped by Ctrl-C or a signal" if stopped else
                         f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        raise


@dataclass
class _TrainingData:
    """A control's labelled items as model inputs, and the unlabelled pool."""

    items: list
    X: dict[str, np.ndarray]
    y: list
    pool: list
    unlabelled: dict[str, np.ndarray] | None
    multilabel: bool
    skipped: list[dict[str, str]]

    @property
    def classes(self) -> list[str]:
        return sorted({c for v in self.y for c in (v if isinstance(v, (list, tuple)) else [v])})


def _training_data(store: Store, settings: Settings, project_name: str, control: str | None, encoders: Encoders,
                   progress: bool) -> _TrainingData:
    what = project_name if control is None else f"{project_name}, control {control!r},"
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        labels = repo.current_labels(s, project=project, control=control)
        all_items = repo.list_items(s, project=project)
        items = [it for it in all_items if it.id in labels]
        pool = [it for it in all_items if it.id not in labels]
        if len(items) < 4:
            raise NotEnoughLabelsError(f"project {what} has {len(items)} labelled item(s); need at least 4")
        with MediaFetcher(settings) as fetcher:
            report = embed_items(items, encoders=encoders, fetcher=fetcher, progress=progress)
        multilabel = repo.is_multilabel(project, labels) if control is None else \
            any(len(v) > 1 for v in labels.values())
    X = load_features(items, encoders=encoders, parts=settings.parts)
    usable = usable_rows(X, len(items))
    skipped = [{"id": it.external_id, "error": "no usable modality"} for it, ok in zip(items, usable) if not ok]
    skipped += [{"id": f["id"], "error": f["error"]} for f in report.failed]
    items = [it for it, ok in zip(items, usable) if ok]
    X = {m: a[usable] for m, a in X.items()}
    y = [labels[it.id] if multilabel else labels[it.id][0] for it in items]
    pooled = [m for m in X if not is_parts_key(m)]
    unlabelled = unlabelled_features(pool, encoders, pooled) if settings.self_training != "off" else None
    return _TrainingData(items, X, y, pool, unlabelled, multilabel, skipped)


def _refit_configuration(settings: Settings, head: str, active: ModelVersion | None, multilabel: bool) -> Candidate | None:
    """What a refit fits: the forced model, else the active version's configuration, else (before
    any search) the plain baseline; None where only a search can tell (a forced model that is not
    the one serving must beat it on the same folds first)."""
    try:
        serving = Candidate.parse(active.head) if active is not None else None
    except UnknownNameError:
        serving = None
    if head != AUTO:
        forced = Candidate.parse(head)
        if serving is not None and not _same_configuration(forced, serving):
            return None
        config = forced
    elif serving is not None:
        config = serving
    elif active is not None:
        return None
    else:
        config = Candidate("concat" if multilabel else LINEAR)
    self_training = {"on": config.model not in NO_SELF_TRAINING and not multilabel, "off": False}.get(
        settings.self_training, config.self_training)
    return Candidate(config.model, config.modalities, self_training)


def _same_configuration(a: Candidate | str, b: Candidate | str) -> bool:
    """Same model on the same modalities (self-training aside: a setting decides it)."""
    a, b = (Candidate.parse(c) if isinstance(c, str) else c for c in (a, b))
    return (a.model, a.modalities) == (b.model, b.modalities)


def _last_search(session, project, control: str | None) -> SearchRecord | None:
    """The newest search of ``control`` (a version from before refits counts: each was a search)."""
    for mv in reversed(repo.list_model_versions(session, project=project, control=control)):
        m = mv.metrics or {}
        if m.get("training", SEARCH) == SEARCH:
            se = m.get("macro_f1_se")
            if se is None:  # recorded before the standard error was
                splits = max([row.get("splits") or 1 for row in m.get("candidates", []) if row.get("chosen")] or [1])
                se = (m.get("macro_f1_sd") or 0.0) / np.sqrt(splits)
            return SearchRecord(mv.n_labels, frozenset(m["classes"]) if m.get("classes") else None,
                                m.get("macro_f1"), float(se))
    return None


def _train_control(store: Store, settings: Settings, project_name: str, control: str | None, *, mode: str,
                   head: str, force: bool, encoders: Encoders, params: dict[str, Any] | None,
                   progress: bool, background: bool = False, score: bool = True) -> tuple[RetrainResult, dict[str, float]]:
    """One control's model (None: the primary): refitted or chosen, saved as a version, promoted if
    not worse. Versions are ``v<n>`` for the primary and ``<control>.v<n>`` for the others.
    ``background``: a search running without the training lock, which it takes to record."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = _training_data(store, settings, project_name, control, encoders, progress)
    timings["embed_s"] = time.perf_counter() - t0
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        active = repo.active_model_version(s, project=project, control=control)
        last_search = _last_search(s, project, control)
    config = _refit_configuration(settings, head, active, data.multilabel) if mode == REFIT else None
    if config is not None:
        return _refit(store, settings, project_name, control, config, data, active, last_search, timings, t0,
                      head=head, force=force, encoders=encoders, params=params, score=score)
    return _search(store, settings, project_name, control, data, active, timings, head=head, force=force,
                   encoders=encoders, params=params, background=background)


def _refit(store: Store, settings: Settings, project_name: str, control: str | None, config: Candidate,
           data: _TrainingData, active: ModelVersion | None, last_search: SearchRecord | None,
           timings: dict[str, float], t0: float, *, head: str, force: bool, encoders: Encoders,
           params: dict[str, Any] | None, score: bool) -> tuple[RetrainResult, dict[str, float]]:
    """Fit ``config`` on every label and serve it; then (``score``) score it on the folds for the
    record, or leave that to `score_refit`."""
    device = resolve_device(settings.device)
    options = dict(multilabel=data.multilabel, random_state=0, device=device, params=params)
    t1 = time.perf_counter()
    clf = _warm_refit(settings, config, active, data, encoders) or config.fit(data.X, data.y, data.unlabelled,
                                                                                **options)
    timings["train_s"] = time.perf_counter() - t1
    why = (f"refit of {active.version}'s configuration on {len(data.items)} labels" if active is not None
           else f"the plain baseline until a model search has run on {len(data.items)} labels")
    metrics: dict[str, Any] = {
        "training": REFIT, "chosen": config.name, "why": why, "classes": data.classes,
        "pseudo_labels": clf.n_pseudo_labels_, "warm_start": bool(getattr(clf, "warm_started_", False)),
        "scored": False,  # until `_score` (or `score_refit`) runs
        "search_due": search_due(last_search, len(data.items), data.classes) if head == AUTO else None}
    version, promoted, reason = _record(store, settings, project_name, control, clf, config.name, metrics,
                                        len(data.items), encoders, lambda now: _refit_decision(config, now, force))
    timings["serve_s"] = time.perf_counter() - t0  # labels read to the version serving: what a person waits for
    if score:
        t2 = time.perf_counter()
        metrics.update(_score(store, settings, project_name, control, version, config, clf, data, active, last_search,
                              encoders, params=params, forced=head != AUTO))
        metrics.pop("scored")
        with store.session() as s:
            repo.get_model_version(s, project=repo.get_project(s, name=project_name), version=version).metrics = \
                _jsonable(metrics)
        timings["score_s"] = time.perf_counter() - t2
    return RetrainResult(version, promoted, _jsonable(metrics), len(data.items), None, reason, data.skipped,
                         control=control), timings


def _warm_refit(settings: Settings, config: Candidate, active: ModelVersion | None, data: _TrainingData,
                encoders: Encoders):
    """The serving model fitted again on every label from where it is: a fusion network trained on
    for a few steps (`FusionClassifier`'s ``warm_start``), a logistic regression from its
    coefficients (`LinearClassifier`'s: from zero it took 6 s at 1,000 labels). None where a refit
    starts afresh: another configuration, self-training, a kernel model (closed form), or files
    that are gone."""
    if active is None or config.self_training or config.model == KERNEL or active.head != config.name:
        return None
    previous = _comparable_model(settings, active, encoders)
    if not isinstance(previous, (FusionClassifier, LinearClassifier)) or not set(previous.modalities_) <= set(data.X):
        return None
    clf = previous.set_params(warm_start=True).fit(inputs_for(previous, data.X), data.y)
    return clf.set_params(warm_start=False)  # saved as an ordinary classifier


def score_refit(store: Store, settings: Settings, *, project_name: str, version: str,
                encoders: Encoders | None = None, nice: int = 0) -> dict[str, Any] | None:
    """Score a refit served unscored (the backend serves first): its configuration cross-validated
    on today's labels, the stopping signal against the version before it, and `search_due` with
    the refit's score; written to its version row and returned. None when a newer version of its
    control exists (that one is scored instead) or it is scored already."""
    encoders = encoders or Encoders(settings)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        row = repo.get_model_version(s, project=project, version=version)
        control = row.control
        versions = repo.list_model_versions(s, project=project, control=control)
        if versions[-1].version != version or row.metrics.get("scored", True):
            return None
        previous = versions[-2] if len(versions) > 1 else None
        last_search = _last_search(s, project, control)
        metrics = dict(row.metrics)
        forced = settings.model != AUTO
    data = _training_data(store, settings, project_name, control, encoders, progress=False)
    clf, _ = load_version(settings, row)
    metrics.update(_score(store, settings, project_name, control, version, Candidate.parse(row.head), clf, data,
                          previous, last_search, encoders, params=None, forced=forced, nice=nice))
    metrics.pop("scored", None)
    with store.session() as s:
        repo.get_model_version(s, project=repo.get_project(s, name=project_name), version=version).metrics = \
            _jsonable(metrics)
    return _jsonable(metrics)


def _score(store: Store, settings: Settings, project_name: str, control: str | None, version: str,
           config: Candidate, clf, data: _TrainingData, previous: ModelVersion | None, last_search: SearchRecord | None, encoders: Encoders,
           *, params: dict[str, Any] | None, forced: bool, nice: int = 0) -> dict[str, Any]:
    """A refit's record: ``config`` cross-validated on the folds of ``data`` (one repeat), the
    stopping signal against ``previous``, and whether a search could change the answer."""
    background = nice > 0  # in the backend's background thread: fold workers at a lower priority
    scores = ModelSearch([config], self_training="on" if config.self_training else "off",
                         multilabel=data.multilabel, repeats=1, n_jobs=None if background else 1, nice=nice,
                         refit=False, params=params, random_state=0,
                         device=resolve_device(settings.device)).fit(data.X, data.y, unlabelled=data.unlabelled)
    metrics = {k: v for k, v in scores.metrics_.items() if k not in ("chosen", "why")}
    previous_model = _comparable_model(settings, previous, encoders) if previous is not None else None
    metrics["stopping"] = _stopping(previous, previous_model, encoders, clf, data.pool,
                                    _history(store, project_name, control, exclude=version),
                                    (len(data.items), metrics.get("macro_f1")))
    metrics["search_due"] = None if forced else search_due(last_search, len(data.items), data.classes,
                                                           finite_or_none(metrics.get("macro_f1")))
    return metrics


def _refit_decision(config: Candidate, now: ModelVersion | None, force: bool) -> tuple[bool, str]:
    """A refit replaces only a version of its own configuration: one a search promoted meanwhile
    (a better configuration) keeps serving."""
    if force:
        return True, "forced"
    if now is None:
        return True, "no active version"
    if _same_configuration(config, now.head):
        return True, f"refit of {now.version}'s configuration ({now.head}) on today's labels"
    return False, f"{now.version} serves another configuration ({now.head}), chosen by a search; kept {now.version}"


def _search(store: Store, settings: Settings, project_name: str, control: str | None, data: _TrainingData,
            active: ModelVersion | None, timings: dict[str, float], *, head: str, force: bool, encoders: Encoders,
            params: dict[str, Any] | None, background: bool) -> tuple[RetrainResult, dict[str, float]]:
    """Choose the model by cross-validation (`ModelSearch`), fit it on every label, record it."""
    t1 = time.perf_counter()
    active_model = _comparable_model(settings, active, encoders) if active else None
    reference = (f"active {active.version}: {active.head}", active_model.clone(), list(active_model.modalities_)) \
        if active_model is not None else None
    search = ModelSearch(head, self_training=settings.self_training, multilabel=data.multilabel, params=params,
                         reference=reference, random_state=0, device=resolve_device(settings.device),
                         nice=BACKGROUND_NICE if background else 0)
    search.fit(data.X, data.y, unlabelled=data.unlabelled)
    clf = search.best_estimator_
    timings["train_s"] = time.perf_counter() - t1
    metrics = dict(search.metrics_)
    metrics.update(training=SEARCH, classes=data.classes, pseudo_labels=clf.n_pseudo_labels_)
    previous = metrics.get("reference")
    metrics["stopping"] = _stopping(active, active_model, encoders, clf, data.pool,
                                    _history(store, project_name, control),
                                    (len(data.items), metrics.get("macro_f1")))
    snapshot = (active.version, active.head, active.n_labels) if active else None
    decide = lambda now: _search_decision(search, force, snapshot, now, len(data.items))  # noqa: E731
    lock = _training_lock_waiting(store, project_name) if background else nullcontext()
    with lock:
        version, promoted, reason = _record(store, settings, project_name, control, clf, search.best_.name,
                                            metrics, len(data.items), encoders, decide)
    return RetrainResult(version, promoted, _jsonable(metrics), len(data.items), _jsonable(previous), reason,
                         data.skipped, control=control), timings


def _search_decision(search: ModelSearch, force: bool, snapshot, now: ModelVersion | None,
                     n_labels: int) -> tuple[bool, str]:
    """`_decide`, and what changed while the search ran (it runs without the training lock): the
    comparison holds only while the configuration it was compared with still serves, and the
    search's fit of that same configuration does not replace a refit of it on more labels."""
    promoted, reason = _decide(search, force, snapshot)
    if force or snapshot is None or now is None or now.version == snapshot[0]:
        return promoted, reason
    if not _same_configuration(now.head, snapshot[1]):
        return False, f"{now.version} ({now.head}) began serving during the search; kept {now.version}"
    if promoted and _same_configuration(search.best_, now.head) and n_labels <= now.n_labels:
        return False, (f"the search chose the configuration {now.version} serves, which was refitted on "
                       f"{now.n_labels} labels meanwhile; kept {now.version}")
    return promoted, reason


def _record(store: Store, settings: Settings, project_name: str, control: str | None, clf, name: str,
            metrics: dict[str, Any], n_labels: int, encoders: Encoders, decide) -> tuple[str, bool, str]:
    """Save a new version of ``control`` and promote it if ``decide(the active version now)`` says
    so; returns (version, promoted, why). Callers hold the training lock, so numbers never clash."""
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        earlier = repo.list_model_versions(s, project=project, control=control)
        n = len(earlier) + 1
        version = f"v{n}" if control is None else f"{control}.v{n}"
        promoted, reason = decide(repo.active_model_version(s, project=project, control=control))
        artifact = save_version(settings, version_dir(settings, project_name, version), clf, encoders.names(),
                                _jsonable(metrics), n_labels)
        s.add(ModelVersion(project_id=project.id, version=version, head=name, control=control,
                           metrics=_jsonable(metrics), artifact_path=artifact, n_labels=n_labels, status="candidate"))
        s.flush()
        if promoted:
            repo.promote_model_version(s, project=project, version=version)
    return version, promoted, reason


def _history(store: Store, project_name: str, control: str | None, exclude: str | None = None):
    """(labels, macro-F1, kappa) of the control's earlier versions, for the stopping signal."""
    with store.session() as s:
        return [(mv.n_labels, mv.metrics.get("macro_f1"), (mv.metrics.get("stopping") or {}).get("kappa"))
                for mv in repo.list_model_versions(s, project=repo.get_project(s, name=project_name), control=control)
                if mv.version != exclude]


def _comparable_model(settings: Settings, active: ModelVersion, encoders: Encoders):
    """The active version's fitted model, loaded once per retrain: scored again on today's folds (as
    an unfitted copy) and compared with the new model on the stop set. None when its files are gone
    or it was trained on other encoders (not comparable)."""
    try:
        old, old_encoders = load_version(settings, active)
    except FileNotFoundError:
        return None
    if old_encoders != {m: n for m, n in encoders.names().items() if m in old_encoders}:
        return None
    return old


def _stopping(active: ModelVersion | None, active_model, encoders: Encoders, clf, pool: Sequence,
              history: list[tuple[int, float | None, float | None]], now: tuple[int, float | None]) -> dict[str, Any]:
    """Whether more labels are likely to change the model (`annotator.active.stopping`): the new model
    and the active one (``active_model``, if comparable) label the stop set, a fixed sample of the
    unlabelled items with vectors."""
    slope = label_slope([(n, f1) for n, f1, _ in history] + [now])
    if not pool:
        return {"kappa": None, "stop_set": 0, "compared_with": None, "signal": "stop",
                "why": "every item is labelled", "f1_per_100_labels": slope}
    kappa, sample = None, 0
    if active_model is not None:
        items = stop_set([it for it in pool if any(getattr(it, f"{m}_sha") for m in clf.modalities_)])
        parts = getattr(clf, "uses_parts", False) or getattr(active_model, "uses_parts", False)
        X = load_features(items, encoders=encoders, modalities=list(clf.modalities_), parts=parts) if items else {}
        usable = usable_rows(X, len(items)) if X else np.zeros(0, dtype=bool)
        if usable.any() and set(active_model.modalities_) <= set(X):
            X = {m: a[usable] for m, a in X.items()}
            kappa = round(agreement(active_model.predict(inputs_for(active_model, X)), clf.predict(X)), 4)
            sample = int(usable.sum())
    report = stopping_signal([k for _, _, k in history] + [kappa])
    return {"kappa": kappa, "stop_set": sample, "compared_with": active.version if active else None,
            "f1_per_100_labels": slope, **report}


def _decide(search: ModelSearch, force: bool, active_snapshot) -> tuple[bool, str]:
    if force:
        return True, "forced"
    if active_snapshot is None:
        return True, "no active version"
    version = active_snapshot[0]
    reference = search.result(search.reference[0]) if search.reference else None
    if reference is None or reference.error or np.isnan(reference.mean):
        return True, f"active version {version} could not be scored on these features and labels"
    new = search.result(search.best_.name)
    if new is None or np.isnan(new.mean):
        return True, f"too few labels per class to compare with {version}; more labels"
    if new.mean >= reference.mean - reference.se - 1e-9:
        return True, (f"macro-F1 {new.mean:.4f} vs {reference.mean:.4f} (standard error {reference.se:.4f}) for {version}'s model "
                      f"on the same folds of today's labels")
    return False, (f"macro-F1 {new.mean:.4f} < {reference.mean:.4f} (standard error {reference.se:.4f}) for {version}'s model on "
                   f"the same folds of today's labels; kept {version}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float) and np.isnan(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj

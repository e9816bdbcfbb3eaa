"""retrain → choose the model on the project's labels → version → promote if not worse.

The model is chosen per project (`ModelSearch`): candidates are cross-validated on the same folds of
the project's labels and the winner is refitted on every label, so the served model learns from all
of them. Promotion compares like with like: the active version's configuration is scored on the
same folds of today's labels, not by a figure recorded when it had fewer.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator.active.stopping import agreement, label_slope, stop_set, stopping_signal
from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.encoders.base import is_parts_key, resolve_device
from annotator.errors import ConfigError, NotEnoughLabelsError, TrainingInProgressError
from annotator.fusion.base import inputs_for
from annotator.fusion.heads import COATTENTION
from annotator.fusion.selection import AUTO, Candidate, ModelSearch
from annotator.media import MediaFetcher
from annotator.encoders.registry import Encoders
from annotator.store import Store, repo
from annotator.store.locks import try_lock
from annotator.store.models import ModelVersion, utcnow
from annotator.versions import load_version, prune_versions, save_version, version_dir

MAX_UNLABELLED = 20_000


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
    def model(self) -> str:
        """The chosen candidate's name (e.g. ``logreg`` or ``attention [text+image] +self-training``)."""
        return self.metrics.get("chosen", "")

    def to_dict(self) -> dict[str, Any]:
        keys = ("accuracy", "macro_f1", "ece")
        out = {"model_version": self.model_version, "promoted": self.promoted,
               "metrics": {k: self.metrics.get(k) for k in keys}, "n_labels": self.n_labels,
               "stopping": self.metrics.get("stopping"),
               "model": self.model, "why": self.metrics.get("why"), "candidates": self.metrics.get("candidates", []),
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
            progress: bool = True, lock_held: bool = False) -> RetrainResult:
    """Choose the project's model on its labels, fit it on every label, promote it if it is not worse;
    then the same for each other control the project has labels for (each `<Choices>` and
    `<Taxonomy>` of a Label Studio config has its own model and versions, over the same cached
    vectors). The result is the primary control's, with the others' in ``controls``; a control
    with too few labels is skipped with the reason, and the primary's lack of labels is an error.

    ``head="auto"`` compares the candidates of `ModelSearch` (fusion heads, logistic regression,
    single modalities) by cross-validated macro-F1; a model name (``attention``, ``logreg``,
    ``concat [text]``…) forces that one. Self-training on the project's unlabelled items with
    cached vectors is kept where the same folds say it helps (``settings.self_training``).
    ``params`` go to the fusion heads.

    Not worse means: the chosen model's cross-validated macro-F1 is at least the active version's
    configuration's on the same folds, less one standard error (``force`` promotes regardless). A
    failure at any step leaves the active version serving and records the error on the training
    run. Only one process trains a project at a time; another attempt raises
    `TrainingInProgressError`. ``lock_held``: the caller already holds `training_lock` (the
    trainer does, to check under it that training is still due).
    """
    if head != AUTO and Candidate.parse(head).model == COATTENTION and not settings.parts:  # fail fast on a bad name
        raise ConfigError("the coattention head reads part-level features, which are off: set ANNOTATOR_PARTS=true "
                          "and run `annotator embed` (it adds them to the cache) before training it")
    if lock_held:
        return _retrain_locked(store, settings, project_name=project_name, head=head, force=force, trigger=trigger,
                               encoders=encoders, params=params, progress=progress)
    with training_lock(store, project_name) as acquired:
        if not acquired:
            raise TrainingInProgressError(f"project {project_name!r} is being trained by another process; try again later")
        with store.session() as s:
            repo.mark_interrupted_runs(s, project=repo.get_project(s, name=project_name))
        return _retrain_locked(store, settings, project_name=project_name, head=head, force=force, trigger=trigger,
                               encoders=encoders, params=params, progress=progress)


def _retrain_locked(store: Store, settings: Settings, *, project_name: str, head: str, force: bool, trigger: str,
                    encoders: Encoders | None, params: dict[str, Any] | None, progress: bool) -> RetrainResult:
    encoders = encoders or Encoders(settings)
    t0 = time.perf_counter()
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        run_id = repo.start_training_run(s, project=project, trigger=trigger).id
    try:
        kwargs = dict(head=head, force=force, encoders=encoders, params=params, progress=progress)
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


def _train_control(store: Store, settings: Settings, project_name: str, control: str | None, *, head: str,
                   force: bool, encoders: Encoders, params: dict[str, Any] | None,
                   progress: bool) -> tuple[RetrainResult, dict[str, float]]:
    """One control's model (None: the primary): chosen, fitted, saved as a version, promoted if not
    worse. Versions are ``v<n>`` for the primary and ``<control>.v<n>`` for the others."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
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
    timings["embed_s"] = time.perf_counter() - t0

    X = load_features(items, encoders=encoders, parts=settings.parts)
    usable = usable_rows(X, len(items))
    skipped = [{"id": it.external_id, "error": "no usable modality"} for it, ok in zip(items, usable) if not ok]
    skipped += [{"id": f["id"], "error": f["error"]} for f in report.failed]
    items = [it for it, ok in zip(items, usable) if ok]
    X = {m: a[usable] for m, a in X.items()}
    y = [labels[it.id] if multilabel else labels[it.id][0] for it in items]
    pooled = [m for m in X if not is_parts_key(m)]
    unlabelled = unlabelled_features(pool, encoders, pooled) if settings.self_training != "off" else None

    t1 = time.perf_counter()
    with store.session() as s:
        active = repo.active_model_version(s, project=repo.get_project(s, name=project_name), control=control)
        active_snapshot = (active.version, active.head) if active else None
    active_model = _comparable_model(settings, active, encoders) if active else None
    reference = (f"active {active.version}: {active.head}", active_model.clone(), list(active_model.modalities_)) \
        if active_model is not None else None
    search = ModelSearch(head, self_training=settings.self_training, multilabel=multilabel, params=params,
                         reference=reference, random_state=0, device=resolve_device(settings.device))
    search.fit(X, y, unlabelled=unlabelled)
    clf = search.best_estimator_
    timings["train_s"] = time.perf_counter() - t1
    metrics = dict(search.metrics_)
    metrics["pseudo_labels"] = clf.n_pseudo_labels_
    previous = metrics.get("reference")

    promoted, reason = _decide(search, force, active_snapshot)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        earlier = repo.list_model_versions(s, project=project, control=control)
        version = f"v{len(earlier) + 1}" if control is None else f"{control}.v{len(earlier) + 1}"
        history = [(mv.n_labels, mv.metrics.get("macro_f1"), (mv.metrics.get("stopping") or {}).get("kappa"))
                   for mv in earlier]
    metrics["stopping"] = _stopping(active, active_model, encoders, clf, pool, history,
                                    (len(items), metrics.get("macro_f1")))
    artifact = save_version(settings, version_dir(settings, project_name, version), clf, encoders.names(),
                            _jsonable(metrics), len(items))
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        s.add(ModelVersion(project_id=project.id, version=version, head=search.best_.name, control=control,
                           metrics=_jsonable(metrics), artifact_path=artifact, n_labels=len(items),
                           status="candidate"))
        s.flush()
        if promoted:
            repo.promote_model_version(s, project=project, version=version)
    result = RetrainResult(version, promoted, _jsonable(metrics), len(items), _jsonable(previous), reason, skipped,
                           control=control)
    return result, timings


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

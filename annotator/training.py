"""retrain → evaluate → version → promote-if-not-worse, over cached embeddings.

The held-out split is stable: an item's membership comes from a hash of its id, so as labels grow,
items never move from evaluation into training and every version is judged on items it never saw.
With fewer than ``MIN_HOLDOUT_LABELS`` labels, metrics come from stratified k-fold cross-validation
and the candidate is compared with the active version's recorded metrics.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.encoders.base import resolve_device
from annotator.errors import NotEnoughLabelsError, TrainingInProgressError, UnknownNameError
from annotator.fusion.calibration import expected_calibration_error
from annotator.fusion.classifier import HEADS, FusionClassifier
from annotator.media import MediaFetcher
from annotator.runtime import Encoders
from annotator.store import Store, repo
from annotator.store.models import ModelVersion, utcnow

MIN_HOLDOUT_LABELS = 30
HOLDOUT_FRACTION = 0.2
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

    def to_dict(self) -> dict[str, Any]:
        keys = ("accuracy", "macro_f1", "ece")
        return {"model_version": self.model_version, "promoted": self.promoted,
                "metrics": {k: self.metrics[k] for k in keys}, "n_labels": self.n_labels,
                "details": {"metrics": self.metrics, "previous": self.previous, "reason": self.reason,
                            "skipped": self.skipped}}


def _unit_hash(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / float(1 << 48)


def holdout_split(keys: Sequence[str], labels: Sequence[str], fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Boolean mask of held-out rows: stable per key, and every class with ≥ 2 items has at least
    one held-out and one training row."""
    h = np.array([_unit_hash(k) for k in keys])
    held = h < fraction
    labels = np.asarray(labels)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            held[rows] = False
            continue
        if not held[rows].any():
            held[rows[np.argmin(h[rows])]] = True
        if held[rows].all():
            held[rows[np.argmax(h[rows])]] = False
    return held


def evaluate(clf: FusionClassifier, X: dict[str, np.ndarray], y: Sequence) -> dict[str, Any]:
    """accuracy, macro-F1, per-class F1 and ECE (calibrated and at temperature 1)."""
    from sklearn.metrics import f1_score

    probs = clf.predict_proba(X)
    if clf.multilabel:
        truth = np.array([[c in (v if isinstance(v, list) else [v]) for c in clf.classes_] for v in y])
        pred = probs >= 0.5
        per_class = f1_score(truth, pred, average=None, zero_division=0)
        return {"accuracy": float((truth == pred).all(axis=1).mean()),
                "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)),
                "per_class_f1": dict(zip(clf.classes_, map(float, per_class))), "ece": 0.0, "n_eval": len(y)}
    labels = [v[0] if isinstance(v, list) else v for v in y]
    index = {c: i for i, c in enumerate(clf.classes_)}
    known = np.array([lab in index for lab in labels])
    targets = np.array([index.get(lab, -1) for lab in labels])
    pred = probs.argmax(axis=1)
    raw = clf.decision_function(X) * clf.temperature_
    raw = np.exp(raw - raw.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    per_class = f1_score(targets, pred, labels=range(len(clf.classes_)), average=None, zero_division=0)
    return {
        "accuracy": float((pred == targets).mean()),
        "macro_f1": float(f1_score(targets, pred, labels=range(len(clf.classes_)), average="macro", zero_division=0)),
        "per_class_f1": dict(zip(clf.classes_, map(float, per_class))),
        "ece": expected_calibration_error(probs[known], targets[known]),
        "ece_uncalibrated": expected_calibration_error(raw[known], targets[known]),
        "n_eval": int(len(labels)),
    }


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


def _cv_metrics(clf: FusionClassifier, X, y, folds: int, unlabelled=None) -> dict[str, Any]:
    """Stratified k-fold estimate: out-of-fold predictions of clones of ``clf``, scored once."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([v[0] if isinstance(v, list) else v for v in y])
    oof = np.zeros((len(labels), len(np.unique(labels))), dtype=np.float64)
    classes = sorted(np.unique(labels))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=clf.random_state)
    for train, test in skf.split(labels, labels):
        fold = clf.clone().fit({m: a[train] for m, a in X.items()}, labels[train], unlabelled=unlabelled)
        p = fold.predict_proba({m: a[test] for m, a in X.items()})
        for j, c in enumerate(fold.classes_):
            oof[test, classes.index(c)] = p[:, j]

    class _Fixed:  # evaluate() wants an estimator; this one replays the out-of-fold probabilities
        multilabel, classes_, temperature_ = False, classes, 1.0
        predict_proba = staticmethod(lambda _X: oof)
        decision_function = staticmethod(lambda _X: np.log(np.clip(oof, 1e-12, 1)))

    metrics = evaluate(_Fixed(), X, list(labels))
    metrics["ece_uncalibrated"] = metrics["ece"]
    metrics["cv_folds"] = folds
    return metrics


def _model_dir(settings: Settings, project: str, version: str) -> Path:
    return settings.project_dir(project) / "models" / version


def load_model(settings: Settings, mv: ModelVersion) -> tuple[FusionClassifier, dict[str, str]]:
    """The classifier of a model version and the encoder names it was trained on."""
    path = Path(mv.artifact_path)
    meta = json.loads((path / "meta.json").read_text())
    return FusionClassifier.load(path / "classifier", device=resolve_device(settings.device)), meta["encoders"]


@contextmanager
def training_lock(settings: Settings, project_name: str) -> Iterator[bool]:
    """Non-blocking per-project lock (a file lock, so it holds across processes): yields whether it
    was acquired. Whoever holds it is the only one training the project, so any run still marked
    'running' in the database while it is free belongs to a process that died."""
    path = settings.project_dir(project_name) / ".train.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retrain(store: Store, settings: Settings, *, project_name: str, head: str = "attention", force: bool = False,
            trigger: str = "cli", encoders: Encoders | None = None, params: dict[str, Any] | None = None,
            progress: bool = True) -> RetrainResult:
    """Train a new model version on the project's human labels and promote it if it is not worse.

    The project's unlabelled items with cached vectors take part through self-training (the
    classifier's ``pseudo_label_ratio``), unless ``settings.self_training`` is off.

    Not worse means: macro-F1 on the held-out items at least the active version's on the same
    items (``force`` promotes regardless). A failure at any step leaves the active version serving
    and records the error on the training run. Only one process trains a project at a time;
    another attempt raises `TrainingInProgressError`.
    """
    if head not in HEADS:
        raise UnknownNameError("fusion head", head, HEADS)
    with training_lock(settings, project_name) as acquired:
        if not acquired:
            raise TrainingInProgressError(f"project {project_name!r} is being trained by another process; try again later")
        with store.session() as s:
            repo.mark_interrupted_runs(s, project=repo.get_project(s, name=project_name))
        return _retrain_locked(store, settings, project_name=project_name, head=head, force=force, trigger=trigger,
                               encoders=encoders, params=params, progress=progress)


def _retrain_locked(store: Store, settings: Settings, *, project_name: str, head: str, force: bool, trigger: str,
                    encoders: Encoders | None, params: dict[str, Any] | None, progress: bool) -> RetrainResult:
    encoders = encoders or Encoders(settings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        run_id = repo.start_training_run(s, project=project, trigger=trigger).id
    try:
        with store.session() as s:
            project = repo.get_project(s, name=project_name)
            labels = repo.current_labels(s, project=project)
            all_items = repo.list_items(s, project=project)
            items = [it for it in all_items if it.id in labels]
            pool = [it for it in all_items if it.id not in labels]
            if len(items) < 4:
                raise NotEnoughLabelsError(f"project {project_name!r} has {len(items)} labelled item(s); need at least 4")
            with MediaFetcher(settings) as fetcher:
                report = embed_items(items, encoders=encoders, fetcher=fetcher, progress=progress)
            multilabel = bool(project.multilabel or any(len(labels[it.id]) > 1 for it in items))
        timings["embed_s"] = time.perf_counter() - t0

        X = load_features(items, encoders=encoders)
        usable = usable_rows(X, len(items))
        skipped = [{"id": it.external_id, "error": "no usable modality"} for it, ok in zip(items, usable) if not ok]
        skipped += [{"id": f["id"], "error": f["error"]} for f in report.failed]
        items = [it for it, ok in zip(items, usable) if ok]
        X = {m: a[usable] for m, a in X.items()}
        y = [labels[it.id] if multilabel else labels[it.id][0] for it in items]
        keys = [it.external_id for it in items]
        unlabelled = unlabelled_features(pool, encoders, list(X)) if settings.self_training else None

        clf = FusionClassifier(head=head, multilabel=multilabel, random_state=0,
                               device=resolve_device(settings.device), **(params or {}))
        t1 = time.perf_counter()
        previous = None
        with store.session() as s:
            active = repo.active_model_version(s, project=repo.get_project(s, name=project_name))
            active_snapshot = (active.version, active.artifact_path, dict(active.metrics)) if active else None
        if len(items) >= MIN_HOLDOUT_LABELS and not multilabel:
            held = holdout_split(keys, y)
            train = ~held
            clf.fit({m: a[train] for m, a in X.items()}, [v for v, t in zip(y, train) if t], unlabelled=unlabelled)
            X_eval = {m: a[held] for m, a in X.items()}
            y_eval = [v for v, h in zip(y, held) if h]
            metrics = evaluate(clf, X_eval, y_eval)
            metrics["evaluation"] = "holdout"
            if active_snapshot:
                previous = _evaluate_version(settings, active, encoders, X_eval, y_eval)
        else:
            label_counts = np.unique([v if isinstance(v, str) else v[0] for v in y], return_counts=True)[1]
            folds = int(min(5, label_counts.min())) if not multilabel else 0
            if folds >= 2:
                metrics = _cv_metrics(clf, X, y, folds, unlabelled)
                metrics["evaluation"] = f"{folds}-fold cross-validation"
            else:
                metrics = {"accuracy": float("nan"), "macro_f1": float("nan"), "ece": float("nan"),
                           "evaluation": "none (too few labels per class)"}
            clf.fit(X, y, unlabelled=unlabelled)
            if active_snapshot:
                previous = {k: active_snapshot[2].get(k) for k in ("accuracy", "macro_f1", "ece")}
                previous["evaluation"] = "recorded metrics of the active version"
        timings["train_s"] = time.perf_counter() - t1
        metrics["pseudo_labels"] = clf.n_pseudo_labels_

        promoted, reason = _decide(metrics, previous, force, active_snapshot)
        with store.session() as s:
            project = repo.get_project(s, name=project_name)
            version = f"v{len(repo.list_model_versions(s, project=project)) + 1}"
        path = _model_dir(settings, project_name, version)
        _save_version(path, clf, encoders.names(), metrics, keys)
        with store.session() as s:
            project = repo.get_project(s, name=project_name)
            s.add(ModelVersion(project_id=project.id, version=version, head=head, metrics=_jsonable(metrics),
                               artifact_path=str(path), n_labels=len(items), status="candidate"))
            s.flush()
            if promoted:
                repo.promote_model_version(s, project=project, version=version)
            run = s.get(repo.TrainingRun, run_id)
            run.status, run.model_version, run.finished_at = "succeeded", version, utcnow()
            run.timings = {**timings, "total_s": time.perf_counter() - t0}
        return RetrainResult(version, promoted, _jsonable(metrics), len(items), _jsonable(previous), reason, skipped)
    except BaseException as exc:
        with store.session() as s:
            run = s.get(repo.TrainingRun, run_id)
            run.status, run.finished_at = "failed", utcnow()
            run.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        raise


def _evaluate_version(settings, active: ModelVersion, encoders: Encoders, X, y) -> dict[str, Any] | None:
    try:
        old, old_encoders = load_model(settings, active)
    except FileNotFoundError:
        return None
    if old_encoders != {m: n for m, n in encoders.names().items() if m in old_encoders}:
        return None  # trained on other encoders: not comparable on these features
    metrics = evaluate(old, {m: a for m, a in X.items() if m in old.modalities_}, y)
    metrics["evaluation"] = "holdout (same items)"
    return metrics


def _decide(metrics, previous, force, active_snapshot) -> tuple[bool, str]:
    if force:
        return True, "forced"
    if active_snapshot is None:
        return True, "no active version"
    if previous is None or previous.get("macro_f1") is None or np.isnan(previous["macro_f1"]):
        return True, f"active version {active_snapshot[0]} could not be evaluated on these features"
    new, old = metrics.get("macro_f1"), previous["macro_f1"]
    if new is not None and not np.isnan(new) and new >= old - 1e-9:
        return True, f"macro-F1 {new:.4f} >= {old:.4f} of {active_snapshot[0]}"
    return False, f"macro-F1 {new:.4f} < {old:.4f} of {active_snapshot[0]}; kept {active_snapshot[0]}"


def _save_version(path: Path, clf: FusionClassifier, encoder_names: dict[str, str], metrics, keys) -> None:
    """Write the version folder completely under a temp name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    clf.save(tmp / "classifier")
    (tmp / "meta.json").write_text(json.dumps({
        "encoders": {m: encoder_names[m] for m in clf.modalities_}, "metrics": _jsonable(metrics),
        "trained_on": len(keys)}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float) and np.isnan(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj

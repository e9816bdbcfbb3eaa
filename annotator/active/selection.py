"""Active learning on a project: the next batch worth labelling, and labels that look wrong.

Everything works from cached embeddings (items not encoded yet are encoded first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.active.base import Pool, PoolExhaustedError
from annotator.active.label_errors import (
    knn_disagreement,
    knn_set_disagreement,
    label_matrix,
    multilabel_suspicion,
    out_of_fold_multilabel_probs,
    out_of_fold_probs,
    suspicion_scores,
)
from annotator.active.registry import get_strategy
from annotator.batch import BatchEngine, LocalEngine
from annotator.config import Settings
from annotator.embedding import load_features, usable_rows
from annotator.encoders.registry import Encoders
from annotator.errors import NotEnoughLabelsError, NotFoundError
from annotator.fusion.base import inputs_for
from annotator.fusion.classifier import FusionClassifier
from annotator.fusion.linear import concat_embeddings
from annotator.runtime import Runtime
from annotator.store import Store, repo
from annotator.store.models import Item


def build_pool(features: dict[str, np.ndarray], labelled: np.ndarray, clf=None, *,
               probs: np.ndarray | None = None) -> Pool:
    """Strategy inputs for the unlabelled rows. Embeddings are always the encoders' own vectors
    (content similarity: near-duplicates, coverage); with a model there are also its calibrated
    probabilities (``probs`` when already scored elsewhere, e.g. on a cluster) and hidden features
    (BADGE's gradient embedding)."""
    pool_rows, lab_rows = np.flatnonzero(~labelled), np.flatnonzero(labelled)
    emb = concat_embeddings(features)
    pool = Pool(n=len(pool_rows), embeddings=emb[pool_rows], labelled_embeddings=emb[lab_rows])
    if clf is not None:
        X = {k: a[pool_rows] for k, a in inputs_for(clf, features).items()}
        pool.probs = probs if probs is not None else clf.predict_proba_and_contributions(X)[0]
        pool.hidden = clf.transform(X)
    return pool


@dataclass
class ProjectData:
    items: list[Item]
    features: dict[str, np.ndarray]
    labels: dict[int, list[str]]
    multilabel: bool = False


def load_project_data(store: Store, settings: Settings, project_name: str, encoders: Encoders,
                      progress: bool, engine: BatchEngine | None = None, parts: bool = False) -> ProjectData:
    """Every usable item of a project (encoded first where needed, on ``engine``), its vectors
    (with part-level features for a model that reads them: ``parts``) and its labels."""
    engine = engine or LocalEngine(settings)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        items = repo.list_items(s, project=project)
        labels = repo.current_labels(s, project=project)
        multilabel = repo.is_multilabel(project, labels)
        engine.embed(items, encoders=encoders, progress=progress)
    features = load_features(items, encoders=encoders, parts=parts)
    if not features:
        raise NotFoundError(f"project {project_name!r} has no items with usable media")
    keep = usable_rows(features)
    return ProjectData([it for it, ok in zip(items, keep) if ok], {m: a[keep] for m, a in features.items()}, labels,
                       multilabel)


def select_next(store: Store, settings: Settings, *, project_name: str, strategy: str = "margin", k: int = 20,
                runtime: Runtime | None = None, random_state: int = 0, progress: bool = True,
                engine: BatchEngine | None = None) -> list[dict[str, Any]]:
    """The ``k`` unlabelled items most worth labelling next, best first: ``[{"id", "score"}]``.

    Uncertainty strategies and BADGE use the active model; TypiClust, k-center, TCM and random work
    with no model and no labels (cold start). Encoding and the pool's scoring run on ``engine``
    (this process by default, or a Ray cluster); the strategy runs here, over the pool's vectors.
    """
    runtime = runtime or Runtime(settings)
    chooser = get_strategy(strategy)
    with store.session() as s:
        model = runtime.active_model(s, repo.get_project(s, name=project_name))
    clf = model.classifier if model else None
    data = load_project_data(store, settings, project_name, runtime.encoders, progress, engine,
                             parts=bool(model and model.uses_parts))
    if clf is None and chooser.needs_model:
        raise NotFoundError(f"strategy {strategy!r} needs a trained model; run `annotator retrain --project "
                            f"{project_name}` first, or start with --strategy typiclust (works with no labels)")
    labelled = np.array([it.id in data.labels for it in data.items])
    if labelled.all():
        raise PoolExhaustedError(f"project {project_name!r}: every item is labelled; import more items (for a "
                                 f"Label Studio project, `annotator ls sync --project <id>` brings in unlabelled tasks)")
    pool_items = [it for it, lab in zip(data.items, labelled) if not lab]
    probs = None
    if clf is not None and engine is not None and not engine.in_process:  # else build_pool scores data.features
        scored = engine.score(pool_items, encoders=runtime.encoders, model=model, progress=progress)
        if len(scored.rows) == len(pool_items):  # else the items the model cannot use are scored here
            probs = scored.probs[np.argsort(scored.rows)]
    pool = build_pool(data.features, labelled, clf, probs=probs)
    chosen = chooser.select(pool, min(k, pool.n), rng=np.random.default_rng(random_state))
    return [{"id": pool_items[i].external_id, "score": float(chooser.last_scores_[i])} for i in chosen]


def find_label_errors(store: Store, settings: Settings, *, project_name: str, encoders: Encoders | None = None,
                      folds: int = 5, neighbours: int = 10, progress: bool = True) -> list[dict[str, Any]]:
    """Labelled items whose label looks wrong, most suspicious first:
    ``[{"id", "label", "suggested", "score"}]`` (score in [0, 1]). In a multi-label project
    ``label`` and ``suggested`` are label sets, and every class of an item is checked."""
    encoders = encoders or Encoders(settings)
    data = load_project_data(store, settings, project_name, encoders, progress)
    rows = [i for i, it in enumerate(data.items) if it.id in data.labels]
    if len(rows) < 10:
        raise NotEnoughLabelsError(f"label-error detection needs at least 10 labels; project {project_name!r} has {len(rows)}")
    X = {m: a[rows] for m, a in data.features.items()}
    given = [data.labels[data.items[i].id] for i in rows]
    if data.multilabel:  # every class is a yes/no label of its own
        probs, classes = out_of_fold_multilabel_probs(
            lambda: FusionClassifier(head="concat", multilabel=True, min_steps=200), X, given, folds=folds)
        y = label_matrix(given, classes)
        disagreement = knn_set_disagreement(concat_embeddings(X), y, k=neighbours)
        scores, suggested = multilabel_suspicion(y, probs, classes, disagreement=disagreement)
        labels = [sorted(g) for g in given]
    else:
        labels = [g[0] for g in given]
        probs, classes = out_of_fold_probs(lambda: FusionClassifier(head="concat", min_steps=200), X, labels,
                                           folds=folds)
        disagreement, _ = knn_disagreement(concat_embeddings(X), labels, k=neighbours)
        scores, suggested = suspicion_scores(labels, probs, classes, disagreement=disagreement)
    order = np.argsort(-scores, kind="stable")
    return [{"id": data.items[rows[i]].external_id, "label": labels[i], "suggested": suggested[i],
             "score": round(float(scores[i]), 6)} for i in order]


def annotator_agreement(store: Store, *, project_name: str) -> dict[str, Any]:
    """How far the project's annotators agree (`annotator.consensus.agreement_report`), with item ids
    instead of keys; ``disagreements`` are review-queue entries (``id``, consensus as ``suggested``,
    ``score`` = share of annotators against it), most contested first."""
    from annotator.consensus import agreement_report

    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        report = agreement_report(repo.live_annotations(s, project=project))
        ids = repo.external_ids(s, project=project)
    agreement, labels = report.pop("item_agreement"), report.pop("consensus")
    report["disagreements"] = [{"id": ids[pk], "suggested": labels[pk][0] if labels[pk] else "",
                                "label": labels[pk], "score": round(1.0 - agreement[pk], 4)}
                               for pk in report["disagreements"]]
    return report

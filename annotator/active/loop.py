"""Active learning on a project: choose the next batch, find suspicious labels, simulate a strategy.

Everything works from cached embeddings; nothing is re-encoded.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from annotator.active.base import Pool
from annotator.active.label_errors import knn_disagreement, out_of_fold_probs, suspicion_scores
from annotator.active.registry import get_strategy
from annotator.config import Settings
from annotator.embedding import embed_items, load_features, usable_rows
from annotator.errors import NotEnoughLabelsError, NotFoundError
from annotator.fusion.classifier import FusionClassifier
from annotator.fusion.linear import concat_embeddings
from annotator.fusion.selection import Candidate, ModelSearch
from annotator.media import MediaFetcher
from annotator.runtime import Encoders
from annotator.store import Store, open_store, repo
from annotator.store.models import Item


def fit_model(X: dict[str, np.ndarray], y, *, head: str = "auto", unlabelled: dict[str, np.ndarray] | None = None,
              self_training: str = "auto", random_state: int = 0):
    """The model `retrain` would serve for these labels (`ModelSearch`'s choice, refitted on all of
    them), so simulated learning curves describe the production model. A forced model with
    self-training forced on or off leaves nothing to choose: it is fitted without scoring."""
    if head != "auto" and self_training != "auto":
        forced = Candidate.parse(head)
        return Candidate(forced.model, forced.modalities, self_training == "on").fit(X, y, unlabelled,
                                                                                     random_state=random_state)
    search = ModelSearch(head, self_training=self_training, random_state=random_state)
    return search.fit(X, y, unlabelled=unlabelled).best_estimator_


def build_pool(features: dict[str, np.ndarray], labelled: np.ndarray, clf=None) -> Pool:
    """Strategy inputs for the unlabelled rows. Embeddings are always the encoders' own vectors
    (content similarity: near-duplicates, coverage); with a model there are also its calibrated
    probabilities and hidden features (BADGE's gradient embedding)."""
    pool_rows, lab_rows = np.flatnonzero(~labelled), np.flatnonzero(labelled)
    emb = concat_embeddings(features)
    pool = Pool(n=len(pool_rows), embeddings=emb[pool_rows], labelled_embeddings=emb[lab_rows])
    if clf is not None:
        X = {m: a[pool_rows] for m, a in features.items() if m in clf.modalities_}
        pool.probs, _ = clf.predict_proba_and_contributions(X)
        pool.hidden = clf.transform(X)
    return pool


@dataclass
class _ProjectData:
    items: list[Item]
    features: dict[str, np.ndarray]
    labels: dict[int, list[str]]


def _load_project(store: Store, settings: Settings, project_name: str, encoders: Encoders,
                  progress: bool) -> _ProjectData:
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        items = repo.list_items(s, project=project)
        labels = repo.current_labels(s, project=project)
        with MediaFetcher(settings) as fetcher:
            embed_items(items, encoders=encoders, fetcher=fetcher, progress=progress)
    features = load_features(items, encoders=encoders)
    if not features:
        raise NotFoundError(f"project {project_name!r} has no items with usable media")
    keep = usable_rows(features)
    return _ProjectData([it for it, ok in zip(items, keep) if ok], {m: a[keep] for m, a in features.items()}, labels)


def select_next(store: Store, settings: Settings, *, project_name: str, strategy: str = "margin", k: int = 20,
                encoders: Encoders | None = None, random_state: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """The ``k`` unlabelled items most worth labelling next, best first: ``[{"id", "score"}]``.

    Uncertainty strategies and BADGE use the active model; TypiClust, k-center, TCM and random work
    with no model and no labels (cold start).
    """
    from annotator.training import load_model

    encoders = encoders or Encoders(settings)
    chooser = get_strategy(strategy)
    data = _load_project(store, settings, project_name, encoders, progress)
    with store.session() as s:
        active = repo.active_model_version(s, project=repo.get_project(s, name=project_name))
    clf = load_model(settings, active)[0] if active else None
    if clf is None and chooser.needs_model:
        raise NotFoundError(f"strategy {strategy!r} needs a trained model; run `annotator retrain --project "
                            f"{project_name}` first, or start with --strategy typiclust (works with no labels)")
    labelled = np.array([it.id in data.labels for it in data.items])
    if labelled.all():
        from annotator.active.base import PoolExhaustedError

        raise PoolExhaustedError(f"project {project_name!r}: every item is labelled; import more items (for a "
                                 f"Label Studio project, `annotator ls sync --project <id>` brings in unlabelled tasks)")
    pool = build_pool(data.features, labelled, clf)
    chosen = chooser.select(pool, min(k, pool.n), rng=np.random.default_rng(random_state))
    pool_items = [it for it, lab in zip(data.items, labelled) if not lab]
    return [{"id": pool_items[i].external_id, "score": float(chooser.last_scores_[i])} for i in chosen]


def find_label_errors(store: Store, settings: Settings, *, project_name: str, encoders: Encoders | None = None,
                      folds: int = 5, neighbours: int = 10, progress: bool = True) -> list[dict[str, Any]]:
    """Labelled items whose label looks wrong, most suspicious first:
    ``[{"id", "label", "suggested", "score"}]`` (score in [0, 1])."""
    encoders = encoders or Encoders(settings)
    data = _load_project(store, settings, project_name, encoders, progress)
    rows = [i for i, it in enumerate(data.items) if it.id in data.labels]
    if len(rows) < 10:
        raise NotEnoughLabelsError(f"label-error detection needs at least 10 labels; project {project_name!r} has {len(rows)}")
    labels = [data.labels[data.items[i].id][0] for i in rows]
    X = {m: a[rows] for m, a in data.features.items()}
    probs, classes = out_of_fold_probs(lambda: FusionClassifier(head="concat", min_steps=200), X, labels, folds=folds)
    disagreement, _ = knn_disagreement(concat_embeddings(X), labels, k=neighbours)
    scores, suggested = suspicion_scores(labels, probs, classes, disagreement=disagreement)
    order = np.argsort(-scores, kind="stable")
    return [{"id": data.items[rows[i]].external_id, "label": labels[i], "suggested": suggested[i],
             "score": round(float(scores[i]), 6)} for i in order]


# --- simulation --------------------------------------------------------------------------------

def _evaluate(clf, X, y) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    pred = np.array(clf.predict(X))
    return float((pred == y).mean()), float(f1_score(y, pred, average="macro"))


def _stratified_test(y: np.ndarray, rng, fraction: float) -> np.ndarray:
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: max(1, int(round(len(rows) * fraction)))]] = True
    return test


def run_curve(features: dict[str, np.ndarray], y: np.ndarray, test: np.ndarray, strategy: str, *, budget: int,
              step: int, seed: int, head: str = "auto", warm_start: str = "typiclust",
              self_training: str = "auto") -> list[dict[str, float]]:
    """Label ``step`` items at a time from the non-test rows with ``strategy`` until ``budget``; the
    model is chosen and retrained from scratch after each step, as `retrain` does (`fit_model`, the
    rest of the pool as unlabelled items), and scored on the test rows. Strategies that need a model pick
    their first batch with ``warm_start`` (a cold-start strategy)."""
    rng = np.random.default_rng(seed)
    chooser, warm = get_strategy(strategy), get_strategy(warm_start)
    pool_rows = np.flatnonzero(~test)
    Xp = {m: a[pool_rows] for m, a in features.items()}
    Xt = {m: a[test] for m, a in features.items()}
    yp, yt = y[pool_rows], y[test]
    labelled = np.zeros(len(pool_rows), dtype=bool)
    curve: list[dict[str, float]] = []
    clf = None
    budget = min(budget, len(pool_rows))
    while labelled.sum() < budget:
        n_new = int(min(step, budget - labelled.sum()))
        now = warm if clf is None and chooser.needs_model else chooser
        picks = np.flatnonzero(~labelled)[now.select(build_pool(Xp, labelled, clf), n_new, rng=rng)]
        labelled[picks] = True
        if len(np.unique(yp[labelled])) < 2:
            clf = None
            continue
        clf = fit_model({m: a[labelled] for m, a in Xp.items()}, yp[labelled], head=head, random_state=seed,
                        unlabelled={m: a[~labelled] for m, a in Xp.items()}, self_training=self_training)
        acc, f1 = _evaluate(clf, Xt, yt)
        curve.append({"labels": int(labelled.sum()), "accuracy": acc, "macro_f1": f1})
    return curve


def labels_to_reach(curve: list[dict[str, float]], target: float) -> int | None:
    return next((p["labels"] for p in curve if p["accuracy"] >= target), None)


def simulate(settings: Settings, manifest: Path, *, strategy: str, budget: int, step: int, seeds: int = 3,
             head: str = "auto", test_fraction: float = 0.2, encoders: Encoders | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Active-learning curve of ``strategy`` against random, with the manifest's labels as the oracle.

    The manifest is imported into a throwaway store (the embedding cache is shared, so a re-run
    encodes nothing). For each seed a stratified test split is held out; both strategies start cold
    (one that needs a model picks its first batch with TypiClust) and label ``step`` items at a time
    up to ``budget``. Also reported: full-pool accuracy and the labels each strategy needs to reach
    95 % of it.
    """
    from annotator.importer import import_manifest

    get_strategy(strategy)  # fail fast on bad names
    if head != "auto":
        Candidate.parse(head)
    encoders = encoders or Encoders(settings)
    with tempfile.TemporaryDirectory(prefix="annotator-sim-") as tmp:
        sim_settings = settings.model_copy(update={"database_url": f"sqlite:///{Path(tmp) / 'sim.db'}"})
        store = open_store(sim_settings)
        with store.session() as s:
            report = import_manifest(s, project_name="simulate", manifest=manifest)
        data = _load_project(store, sim_settings, "simulate", encoders, progress)
        store.close()
    rows = [i for i, it in enumerate(data.items) if it.id in data.labels]
    if len(rows) < 20:
        raise NotEnoughLabelsError(f"simulation needs a labelled manifest; {manifest} has {len(rows)} usable labelled items")
    y = np.array([data.labels[data.items[i].id][0] for i in rows])
    features = {m: a[rows] for m, a in data.features.items()}
    names = [strategy] if strategy == "random" else [strategy, "random"]
    runs: dict[str, list[list[dict]]] = {n: [] for n in names}
    full = []
    bar = tqdm(total=seeds * len(names), desc="simulate", file=sys.stderr, disable=not progress)
    for seed in range(seeds):
        test = _stratified_test(y, np.random.default_rng(seed), test_fraction)
        clf = fit_model({m: a[~test] for m, a in features.items()}, y[~test], head=head, random_state=seed,
                        self_training=settings.self_training)
        full.append(_evaluate(clf, {m: a[test] for m, a in features.items()}, y[test])[0])
        for name in names:
            runs[name].append(run_curve(features, y, test, name, budget=budget, step=step, seed=seed, head=head,
                                        self_training=settings.self_training))
            bar.update()
    bar.close()
    full_accuracy = float(np.mean(full))
    curves = {name: _mean_curve(r) for name, r in runs.items()}
    return {"curves": curves, "full_accuracy": full_accuracy, "seeds": seeds, "items": len(rows),
            "skipped_lines": len(report.skipped),
            "labels_to_95pct_of_full": {n: labels_to_reach(c, 0.95 * full_accuracy) for n, c in curves.items()}}


def _mean_curve(runs: list[list[dict]]) -> list[dict[str, float]]:
    by_n: dict[int, list[dict]] = {}
    for run in runs:
        for point in run:
            by_n.setdefault(point["labels"], []).append(point)
    return [{"labels": n, "accuracy": float(np.mean([p["accuracy"] for p in pts])),
             "macro_f1": float(np.mean([p["macro_f1"] for p in pts])), "runs": len(pts)}
            for n, pts in sorted(by_n.items())]


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Learning curves as a PNG (and an HTML page embedding it when ``path`` ends in .html)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in result["curves"].items():
        ax.plot([p["labels"] for p in curve], [p["accuracy"] for p in curve], "o-", ms=3, label=name)
    ax.axhline(0.95 * result["full_accuracy"], ls="--", c="grey", lw=1, label="95 % of full-data accuracy")
    ax.set_xlabel("labelled items")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = Path(path)
    if path.suffix == ".html":
        needed = result["labels_to_95pct_of_full"]
        rows = "".join(f"<tr><td>{n}</td><td>{v if v is not None else 'not reached'}</td></tr>" for n, v in needed.items())
        path.write_text(f"<html><body><h1>Active-learning simulation</h1><p>{result['items']} items, "
                        f"{result['seeds']} seeds, full-data accuracy {result['full_accuracy']:.3f}</p>"
                        f"<table><tr><th>strategy</th><th>labels to reach 95 %</th></tr>{rows}</table>"
                        f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/></body></html>")
    else:
        path.write_bytes(buf.getvalue())

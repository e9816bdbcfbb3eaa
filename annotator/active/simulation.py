"""Simulated active learning: a strategy's learning curve against random, with a labelled
manifest's labels as the oracle, trained exactly as `retrain` trains (`fit_model`)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from annotator.active.registry import get_strategy
from annotator.active.selection import build_pool, load_project_data
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.errors import NotEnoughLabelsError
from annotator.fusion.metrics import evaluate
from annotator.fusion.selection import Candidate, TrainingSchedule, fit_model
from annotator.store import open_store


def stratified_holdout(y: np.ndarray, rng, fraction: float) -> np.ndarray:
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: max(1, int(round(len(rows) * fraction)))]] = True
    return test


def run_curve(features: dict[str, np.ndarray], y: np.ndarray, test: np.ndarray, strategy: str, *, budget: int,
              step: int, seed: int, head: str = "auto", warm_start: str = "typiclust",
              self_training: str = "auto") -> list[dict[str, float]]:
    """Label ``step`` items at a time from the non-test rows with ``strategy`` until ``budget``; the
    model is trained after each step as the backend trains it (`TrainingSchedule`: the model search
    when it could change the choice, else a refit of the choice; the rest of the pool as unlabelled
    items), and scored on the test rows. Strategies that need a model pick
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
    schedule = TrainingSchedule(head, self_training=self_training, random_state=seed)
    budget = min(budget, len(pool_rows))
    while labelled.sum() < budget:
        n_new = int(min(step, budget - labelled.sum()))
        now = warm if clf is None and chooser.needs_model else chooser
        picks = np.flatnonzero(~labelled)[now.select(build_pool(Xp, labelled, clf), n_new, rng=rng)]
        labelled[picks] = True
        if len(np.unique(yp[labelled])) < 2:
            clf = None
            continue
        clf = schedule.fit({m: a[labelled] for m, a in Xp.items()}, yp[labelled],
                           unlabelled={m: a[~labelled] for m, a in Xp.items()}).estimator_
        scores = evaluate(clf, Xt, yt)
        curve.append({"labels": int(labelled.sum()), "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]})
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
        data = load_project_data(store, sim_settings, "simulate", encoders, progress)
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
        test = stratified_holdout(y, np.random.default_rng(seed), test_fraction)
        clf = fit_model({m: a[~test] for m, a in features.items()}, y[~test], head=head, random_state=seed,
                        self_training=settings.self_training)
        full.append(evaluate(clf, {m: a[test] for m, a in features.items()}, y[test])["accuracy"])
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

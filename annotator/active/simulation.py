"""Simulated active learning: a strategy's learning curve against random, with a labelled
manifest's labels as the oracle, trained exactly as `retrain` trains (`fit_model`)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from joblib import delayed
from tqdm import tqdm

from annotator.active.registry import get_strategy
from annotator.active.selection import build_pool, load_project_data
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.errors import NotEnoughLabelsError
from annotator.fusion.metrics import evaluate
from annotator.fusion.selection import Candidate, TrainingSchedule, fit_model
from annotator.parallel import fold_runner
from annotator.store import open_store


def stratified_holdout(y: np.ndarray, rng, fraction: float) -> np.ndarray:
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: max(1, int(round(len(rows) * fraction)))]] = True
    return test


def run_curve(features: dict[str, np.ndarray], y: np.ndarray, test: np.ndarray, strategy: str, *, budget: int,
              step: int, seed: int, head: str = "auto", warm_start: str = "typiclust",
              self_training: str = "auto", n_jobs: int | None = None) -> list[dict[str, float]]:
    """Label ``step`` items at a time from the non-test rows with ``strategy`` until ``budget``; the
    model is trained after each step as the backend trains it (`TrainingSchedule`: the model search
    when it could change the choice, else a refit of the choice; the rest of the pool as unlabelled
    items), and scored on the test rows. Strategies that need a model pick
    their first batch with ``warm_start`` (a cold-start strategy). ``n_jobs``: the searches' fold
    workers (default: every core)."""
    rng = np.random.default_rng(seed)
    chooser, warm = get_strategy(strategy), get_strategy(warm_start)
    pool_rows = np.flatnonzero(~test)
    Xp = {m: a[pool_rows] for m, a in features.items()}
    Xt = {m: a[test] for m, a in features.items()}
    yp, yt = y[pool_rows], y[test]
    labelled = np.zeros(len(pool_rows), dtype=bool)
    curve: list[dict[str, float]] = []
    clf = None
    schedule = TrainingSchedule(head, self_training=self_training, random_state=seed, n_jobs=n_jobs)
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


def full_pool_accuracy(features: dict[str, np.ndarray], y: np.ndarray, test: np.ndarray, *, seed: int,
                       head: str = "auto", self_training: str = "auto", n_jobs: int | None = None) -> float:
    """Test accuracy of the model `retrain` would train on every non-test row (the curves' ceiling)."""
    clf = fit_model({m: a[~test] for m, a in features.items()}, y[~test], head=head, random_state=seed,
                    self_training=self_training, n_jobs=n_jobs)
    return evaluate(clf, {m: a[test] for m, a in features.items()}, y[test])["accuracy"]


def simulate(settings: Settings, manifest: Path, *, strategy: str, budget: int, step: int, seeds: int = 3,
             head: str = "auto", test_fraction: float = 0.2, encoders: Encoders | None = None,
             progress: bool = True, n_jobs: int | None = None) -> dict[str, Any]:
    """Active-learning curve of ``strategy`` against random, with the manifest's labels as the oracle.

    The manifest is imported into a throwaway store (the embedding cache is shared, so a re-run
    encodes nothing). For each seed a stratified test split is held out; both strategies start cold
    (one that needs a model picks its first batch with TypiClust) and label ``step`` items at a time
    up to ``budget``. Also reported: full-pool accuracy and the labels each strategy needs to reach
    95 % of it.

    Each curve and each seed's full-pool fit is one task; with ``n_jobs`` > 1 (default: every core)
    the tasks run in worker processes, each training on one core (whole tasks parallelise better
    than the folds of one search: 235 → 170 s for 3 seeds on 2 cores, `bench_simulate`); the
    results are those of a run in one process.
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
    workers = n_jobs or os.cpu_count() or 1
    inner = 1 if workers > 1 else None  # one process per task; alone, a task's searches use every core
    curve_tasks, fit_tasks = [], []  # the curves first: the longest tasks first leave the shortest for the end
    for seed in range(seeds):
        test = stratified_holdout(y, np.random.default_rng(seed), test_fraction)
        common = dict(seed=seed, head=head, self_training=settings.self_training, n_jobs=inner)
        fit_tasks.append((("full", seed), full_pool_accuracy, (features, y, test), common))
        curve_tasks += [((name, seed), run_curve, (features, y, test, name), dict(budget=budget, step=step, **common))
                        for name in names]
    tasks = curve_tasks + fit_tasks
    results = {}
    bar = tqdm(total=len(tasks), desc="simulate", file=sys.stderr, disable=not progress)
    runner = fold_runner(workers, len(tasks), return_as="generator_unordered")
    for key, result in runner(delayed(_keyed)(key, fn, *args, **kwargs) for key, fn, args, kwargs in tasks):
        results[key] = result
        bar.update()
    bar.close()
    runs = {name: [results[name, seed] for seed in range(seeds)] for name in names}
    full_accuracy = float(np.mean([results["full", seed] for seed in range(seeds)]))
    curves = {name: _mean_curve(r) for name, r in runs.items()}
    return {"curves": curves, "full_accuracy": full_accuracy, "seeds": seeds, "items": len(rows),
            "skipped_lines": len(report.skipped),
            "labels_to_95pct_of_full": {n: labels_to_reach(c, 0.95 * full_accuracy) for n, c in curves.items()}}


def _keyed(key, fn, *args, **kwargs):
    return key, fn(*args, **kwargs)


def _mean_curve(runs: list[list[dict]]) -> list[dict[str, float]]:
    by_n: dict[int, list[dict]] = {}
    for run in runs:
        for point in run:
            by_n.setdefault(point["labels"], []).append(point)
    return [{"labels": n, "accuracy": float(np.mean([p["accuracy"] for p in pts])),
             "macro_f1": float(np.mean([p["macro_f1"] for p in pts])), "runs": len(pts)}
            for n, pts in sorted(by_n.items())]

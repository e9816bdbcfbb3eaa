"""Choose a project's model by cross-validation on its own labels.

Defaults tuned on our benchmark data are no evidence for a user's data. `ModelSearch` compares the
candidates — the fusion heads, logistic regression on the concatenated embeddings, multiple-kernel
fusion with kernel ridge, co-attention over parts where ``X`` carries part-level features, each
modality alone (and, with three or more modalities, each set that leaves one out) — on the *same* stratified
folds of the project's labels, repeated when labels are few. It picks by macro-F1 with the
one-standard-error rule (the simplest candidate whose mean is within one standard error of the
best), lets the same folds decide whether self-training helps, and refits the winner on every label.
A scikit-learn meta-estimator in the manner of `GridSearchCV`: ``fit`` then ``best_estimator_``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.encoders.base import is_parts_key, modality_order
from annotator.errors import NotEnoughLabelsError, UnknownNameError
from annotator.fusion.base import inputs_for
from annotator.fusion.calibration import expected_calibration_error, fit_temperature
from annotator.fusion.classifier import HEADS, FusionClassifier
from annotator.fusion.heads import COATTENTION
from annotator.fusion.kernel import KernelFusionClassifier
from annotator.fusion.linear import LinearClassifier
from annotator.parallel import fold_runner

LINEAR = "logreg"
KERNEL = "kernel"
SINGLE_LABEL_ONLY = (LINEAR, KERNEL)
# self-training predicts the unlabelled pool, which is loaded without part-level features (their size)
NO_SELF_TRAINING = (*SINGLE_LABEL_ONLY, COATTENTION)
MODELS = (LINEAR, KERNEL, *HEADS)  # simplest first: the order the one-standard-error rule prefers
AUTO = "auto"
SELF_TRAINING_CHOICES = ("auto", "on", "off")
RACE_FIRST_FOLDS = 2  # folds every candidate is scored on before the race drops any
RACE_MARGIN = 0.05  # macro-F1 a candidate must trail the leader by, on average and on every fold, to be dropped
SEARCH_GROWTH = 0.5  # a new search once the labels grew by half since the last one
SEARCH_MIN_NEW_LABELS = 10  # a lower refit score asks for a search only after this many new labels
FOLD_PLATEAU_LOSS = 0.01  # a fold's head stops training here (`FusionClassifier.plateau_loss`)


@dataclass(frozen=True)
class Candidate:
    """One model configuration: which model, on which modalities (None: all), self-training or not."""

    model: str
    modalities: tuple[str, ...] | None = None
    self_training: bool = False

    def __post_init__(self):
        if self.model not in MODELS:
            raise UnknownNameError("model", self.model, (AUTO, *MODELS))

    @property
    def name(self) -> str:
        mods = f" [{'+'.join(self.modalities)}]" if self.modalities else ""
        return f"{self.model}{mods}{' +self-training' if self.self_training else ''}"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """The inverse of `name`: ``"attention"``, ``"logreg [text+image]"``, ``"concat +self-training"``."""
        match = re.fullmatch(r"\s*([\w-]+)\s*(?:\[([\w+]+)\])?\s*(\+self-training)?\s*", text or "")
        if not match:
            raise UnknownNameError("model", text, (AUTO, *MODELS))
        mods = tuple(match.group(2).split("+")) if match.group(2) else None
        return cls(match.group(1), mods, bool(match.group(3)))

    def simplicity(self, n_modalities: int) -> tuple[int, int, int]:
        """Sort key, simplest first: linear before the fusion heads (in `MODELS` order), fewer
        modalities first, no self-training first."""
        return MODELS.index(self.model), len(self.modalities or ()) or n_modalities, int(self.self_training)

    def modalities_in(self, available: Sequence[str]) -> list[str]:
        """The modalities of ``available`` this candidate uses; refuses one the data does not have."""
        missing = set(self.modalities or ()) - set(available)
        if missing:
            raise UnknownNameError("modality", sorted(missing)[0], list(available))
        return list(self.modalities) if self.modalities else list(available)

    def fit(self, X: Mapping[str, np.ndarray], y, unlabelled: Mapping[str, np.ndarray] | None = None,
            **build_options):
        """Build this configuration and fit it on its modalities of ``X``; ``unlabelled`` feeds
        self-training when the candidate uses it."""
        mods = self.modalities_in(modality_order(k for k in X if not is_parts_key(k)))
        estimator = self.build(**build_options)
        pool = inputs_for(estimator, unlabelled, mods) if self.self_training and unlabelled is not None else None
        return estimator.fit(inputs_for(estimator, X, mods), y, unlabelled=pool)

    def build(self, *, multilabel: bool = False, random_state: int = 0, device: str = "cpu",
              params: Mapping[str, Any] | None = None):
        """An unfitted estimator for this configuration. ``params`` go to the fusion heads."""
        if self.model in SINGLE_LABEL_ONLY:
            if multilabel:
                raise UnknownNameError("model for a multi-label project", self.model, HEADS)
            estimator = LinearClassifier if self.model == LINEAR else KernelFusionClassifier
            return estimator(random_state=random_state, device=device)
        params = dict(params or {})
        if not self.self_training:
            params["pseudo_label_ratio"] = 0.0
        return FusionClassifier(head=self.model, multilabel=multilabel, random_state=random_state, device=device,
                                **params)


def default_candidates(modalities: Sequence[str], *, multilabel: bool = False, parts: bool = False) -> list[Candidate]:
    """The automatic choice's candidates for a project with these modalities; the ``coattention``
    head only with part-level features (``parts``). With one modality, no ``attention``: a softmax
    over one modality is 1 and its scoring network never learns, so it is ``concat`` trained from
    another random start (an eighth of a text-only search's time, for noise)."""
    modalities = modality_order(modalities)
    models = [m for m in (HEADS if multilabel else MODELS) if parts or m != COATTENTION]
    if len(modalities) == 1:
        models = [m for m in models if m != "attention"]
    out = [Candidate(m) for m in models]
    if len(modalities) > 1:
        for m in modalities:  # each modality alone: its linear model and its network
            out += [Candidate(model, (m,)) for model in (() if multilabel else (LINEAR,)) + ("concat",)]
    if len(modalities) > 2 and not multilabel:  # a modality that hurts can be left out
        for left_out in modalities:
            out.append(Candidate(LINEAR, tuple(m for m in modalities if m != left_out)))
    return out


def _labels(y: Sequence, multilabel: bool) -> np.ndarray | list:
    if multilabel:
        return [list(v) if isinstance(v, (list, tuple)) else [v] for v in y]
    return np.array([str(v[0]) if isinstance(v, (list, tuple)) else str(v) for v in y])


def make_splits(y: Sequence, *, folds: int = 5, repeats: int | str = "auto", multilabel: bool = False,
                random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) splits every candidate is scored on: stratified ``folds``-fold (fewer when
    a class is smaller), repeated ``repeats`` times ("auto": twice below 200 labels, else once).
    Empty when there are too few labels per class to cross-validate."""
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    n = len(y)
    if repeats == "auto":
        repeats = 2 if n < 200 else 1
    if multilabel:
        k = min(folds, n // 2)
        return [] if k < 2 else list(RepeatedKFold(n_splits=k, n_repeats=repeats, random_state=random_state).split(np.zeros(n)))
    labels = _labels(y, False)
    counts = np.unique(labels, return_counts=True)[1]
    if len(counts) < 2 or (counts >= 2).sum() < 2:
        return []
    k = int(min(folds, max(2, counts.min())))
    with warnings.catch_warnings():  # a singleton class is tested once and never trained on: scored as an error
        warnings.simplefilter("ignore", UserWarning)
        return list(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=random_state).split(labels, labels))


def _score_split(estimator, modalities, X, y, train, test, unlabelled, multilabel):
    """Fit a clone on ``train`` and score it on ``test``: (macro-F1, accuracy, test probabilities, classes).

    Runs in a worker process; one torch thread each, since small heads train faster as parallel
    single-threaded runs than as one run on every core.
    """
    import torch
    from sklearn.metrics import f1_score

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Xs = inputs_for(estimator, X, modalities)
        clf = estimator.clone().set_params(calibrate=False)
        if isinstance(clf, FusionClassifier):  # the fold ranks; the served model trains every step
            clf.set_params(refit=False, plateau_loss=clf.plateau_loss or FOLD_PLATEAU_LOSS)
        y_train = [y[i] for i in train] if multilabel else y[train]
        u = inputs_for(estimator, unlabelled, modalities) if unlabelled is not None else None
        clf.fit({m: a[train] for m, a in Xs.items()}, y_train, unlabelled=u)
        probs = clf.predict_proba({m: a[test] for m, a in Xs.items()})
    finally:
        torch.set_num_threads(threads)
    classes = list(clf.classes_)
    if multilabel:
        truth = np.array([[c in y[i] for c in classes] for i in test])
        pred = probs >= 0.5
        return (float(f1_score(truth, pred, average="macro", zero_division=0)),
                float((truth == pred).all(axis=1).mean()), probs, classes)
    pred = np.array(classes)[probs.argmax(axis=1)]
    all_classes = sorted(set(y.tolist()))
    return (float(f1_score(y[test], pred, labels=all_classes, average="macro", zero_division=0)),
            float((pred == y[test]).mean()), probs, classes)


@dataclass
class CandidateResult:
    """Cross-validated scores of one candidate (one entry of the table `retrain` reports)."""

    name: str
    macro_f1: list[float]
    accuracy: list[float]
    oof_probs: np.ndarray | None = None  # first repeat's out-of-fold probabilities, in sorted class order
    error: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.macro_f1)) if self.macro_f1 and self.error is None else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.macro_f1, ddof=1)) if len(self.macro_f1) > 1 and self.error is None else 0.0

    @property
    def se(self) -> float:
        return self.sd / np.sqrt(max(len(self.macro_f1), 1))

    def row(self) -> dict[str, Any]:
        out = {"name": self.name, "macro_f1_mean": _r(self.mean), "macro_f1_sd": _r(self.sd),
               "accuracy_mean": _r(float(np.mean(self.accuracy)) if self.accuracy and self.error is None else float("nan")),
               "splits": len(self.macro_f1)}
        if self.error:
            out["error"] = self.error
        return out


def _r(v: float) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 4)


class ModelSearch:
    """Choose among candidate models by cross-validated macro-F1, then refit the winner on every label.

    Parameters
    ----------
    candidates : "auto" or list of (Candidate or str), default="auto"
        ``auto``: `default_candidates` for the modalities of ``X``. One name forces that model (it is
        still cross-validated, for its metrics and the comparison with ``reference``).
    self_training : {"auto", "on", "off"}, default="auto"
        With unlabelled items given to `fit`: ``auto`` keeps self-training for the chosen fusion head
        only when its cross-validated macro-F1 is higher with it; ``on`` always uses it.
    multilabel : bool, default=False
    folds : int, default=5
    repeats : int or "auto", default="auto"
        See `make_splits`.
    one_standard_error : bool, default=True
        Take the simplest candidate within one standard error of the best mean, not the best mean:
        on a few hundred labels, differences smaller than that are noise, and simpler models
        generalise more predictably.
    reference : (name, unfitted estimator, modalities), optional
        Also score this model (e.g. the active version's configuration, on the modalities it was
        trained on) on the same folds; it is
        reported, never chosen. The caller compares like with like for promotion.
    params : dict, optional
        Extra parameters for the fusion heads.
    n_jobs : int, optional
        Worker processes for the folds (default: every core).
    nice : int, default=0
        Lower the fold workers' priority by this much: a search in the background leaves the cores
        to the work people wait for.
    race : bool, default=True
        Drop a candidate from the cross-validation once it is clearly behind (`_race`); False
        scores every candidate on every fold of the first repeat.
    refit : bool, default=True
        Fit the winner on every label (``best_estimator_``); False only scores, as when the model
        that serves is fitted elsewhere (`GridSearchCV`'s ``refit``).
    random_state : int, default=0
    device : str, default="cpu"

    Attributes
    ----------
    results_ : list of CandidateResult
        Every candidate scored, in the order tried.
    best_ : Candidate
    best_estimator_ : estimator fitted on every label (with ``refit``)
    reason_ : str
        Why the winner was chosen, in words.
    evaluation_ : str
        How the scores were measured (e.g. "5-fold cross-validation x 2").
    metrics_ : dict
        The winner's cross-validated accuracy, macro-F1 and ECE (after a temperature fitted on its
        out-of-fold logits), plus the candidate table.
    """

    def __init__(self, candidates: str | Sequence[Candidate | str] = AUTO, *, self_training: str = "auto",
                 multilabel: bool = False, folds: int = 5, repeats: int | str = "auto",
                 one_standard_error: bool = True, reference: tuple[str, Any, Sequence[str]] | None = None,
                 params: Mapping[str, Any] | None = None, n_jobs: int | None = None, nice: int = 0,
                 race: bool = True, refit: bool = True, random_state: int = 0, device: str = "cpu"):
        self.candidates = candidates
        self.self_training = self_training
        self.multilabel = multilabel
        self.folds = folds
        self.repeats = repeats
        self.one_standard_error = one_standard_error
        self.reference = reference
        self.params = params
        self.n_jobs = n_jobs
        self.nice = nice
        self.race = race
        self.refit = refit
        self.random_state = random_state
        self.device = device

    # --- helpers -----------------------------------------------------------------------------

    def _candidate_list(self, modalities: list[str], parts: bool) -> list[Candidate]:
        if isinstance(self.candidates, str):
            if self.candidates == AUTO:
                return default_candidates(modalities, multilabel=self.multilabel, parts=parts)
            return [Candidate.parse(self.candidates)]
        return [c if isinstance(c, Candidate) else Candidate.parse(c) for c in self.candidates]

    def _build_options(self) -> dict[str, Any]:
        return {"multilabel": self.multilabel, "random_state": self.random_state, "device": self.device,
                "params": self.params}

    def _run(self, jobs: list[tuple[str, Any, list[str], bool]], X, y, splits, unlabelled) -> list[CandidateResult]:
        """Score every (name, estimator, modalities, uses_unlabelled) job on every split; the first
        repeat's out-of-fold probabilities are kept (for the winner's calibration error)."""
        from joblib import delayed

        work = [(j, s) for j in range(len(jobs)) for s in range(len(splits))]
        runner = fold_runner(self.n_jobs or os.cpu_count() or 1, len(work), nice=self.nice)
        outputs = runner(delayed(_safe_score)(jobs[j][1], jobs[j][2], X, y, splits[s][0], splits[s][1],
                                              unlabelled if jobs[j][3] else None, self.multilabel)
                         for j, s in work)
        classes = sorted({c for row in y for c in row}) if self.multilabel else sorted(set(y.tolist()))
        first_repeat = len(splits) // _n_repeats(splits, len(y))
        results = []
        for j, (name, *_rest) in enumerate(jobs):
            f1s, accs, error = [], [], None
            oof = np.zeros((len(y), len(classes)))
            for s in range(len(splits)):
                out = outputs[j * len(splits) + s]
                if isinstance(out, str):
                    error = error or out
                    continue
                f1s.append(out[0])
                accs.append(out[1])
                if s < first_repeat:
                    for col, c in enumerate(out[3]):
                        oof[splits[s][1], classes.index(c)] = out[2][:, col]
            results.append(CandidateResult(name, f1s, accs, oof, error))
        return results

    def _race(self, jobs, X, y, splits, unlabelled, n_reference: int) -> list[CandidateResult]:
        """Score the jobs in stages, each stage only for the candidates still in the race: first
        `RACE_FIRST_FOLDS` folds for all; the rest of the first repeat for those not clearly behind
        the leader there (`_clearly_behind`); the further repeats for those within two standard
        errors of the leader, since more repeats only matter to tell close candidates apart. The
        reference (the last ``n_reference`` jobs) runs every stage. ``race=False``: the first
        repeat for every candidate."""
        repeats = _n_repeats(splits, len(y))
        per_repeat = len(splits) // repeats
        first = RACE_FIRST_FOLDS if self.race and per_repeat > RACE_FIRST_FOLDS + 1 else per_repeat
        results = self._run(jobs, X, y, splits[:first], unlabelled)
        n_candidates = len(results) - n_reference
        is_reference = lambda j: j >= n_candidates  # noqa: E731
        if first < per_repeat:
            ranked = [r for r in results[:n_candidates] if r.error is None]
            leader = max(ranked, key=lambda r: r.mean) if ranked else None
            alive = [j for j, r in enumerate(results) if is_reference(j) or (
                r.error is None and leader is not None and not _clearly_behind(r, leader))]
            self._extend(results, alive, jobs, X, y, splits[first:per_repeat], unlabelled, out_of_fold=True)
        if repeats == 1:
            return results
        most = max((len(r.macro_f1) for r in results[:n_candidates] if r.error is None), default=0)
        ranked = [r for r in results[:n_candidates] if r.error is None and len(r.macro_f1) == most]
        if not ranked:
            return results
        leader = max(ranked, key=lambda r: r.mean)
        finalists = [j for j, r in enumerate(results) if is_reference(j) or (
            r.error is None and len(r.macro_f1) == most and r.mean >= leader.mean - 2 * leader.se)]
        self._extend(results, finalists, jobs, X, y, splits[per_repeat:], unlabelled, out_of_fold=False)
        return results

    def _extend(self, results: list[CandidateResult], which: list[int], jobs, X, y, splits, unlabelled, *,
                out_of_fold: bool) -> None:
        """Score jobs ``which`` on more ``splits``, adding to their results (and to their
        out-of-fold probabilities when the splits are the first repeat's)."""
        more = self._run([jobs[j] for j in which], X, y, splits, unlabelled)
        for j, extra in zip(which, more):
            results[j].macro_f1 += extra.macro_f1
            results[j].accuracy += extra.accuracy
            results[j].error = results[j].error or extra.error
            if out_of_fold and results[j].oof_probs is not None and extra.oof_probs is not None:
                results[j].oof_probs = results[j].oof_probs + extra.oof_probs  # disjoint test rows

    def _choose(self, scored: list[tuple[Candidate, CandidateResult]], n_modalities: int) -> tuple[Candidate, str]:
        valid = [(c, r) for c, r in scored if r.error is None and not np.isnan(r.mean)]
        most = max((len(r.macro_f1) for _, r in valid), default=0)
        valid = [(c, r) for c, r in valid if len(r.macro_f1) == most]  # the finalists of the race
        if not valid:
            raise NotEnoughLabelsError("every candidate model failed on these labels: "
                                       + "; ".join(f"{r.name}: {r.error}" for _, r in scored))
        best_c, best = max(valid, key=lambda cr: (cr[1].mean, [-v for v in cr[0].simplicity(n_modalities)]))
        if not self.one_standard_error or len(valid) == 1:
            return best_c, f"highest cross-validated macro-F1 ({best.mean:.3f})"
        threshold = best.mean - best.se
        close = [(c, r) for c, r in valid if r.mean >= threshold]
        chosen_c, chosen = min(close, key=lambda cr: cr[0].simplicity(n_modalities))
        if chosen_c == best_c:
            return best_c, f"highest cross-validated macro-F1 ({best.mean:.3f})"
        return chosen_c, (f"simplest within one standard error of the best: {chosen.mean:.3f} vs "
                          f"{best.name} {best.mean:.3f} (standard error {best.se:.3f})")

    # --- fit -----------------------------------------------------------------------------------

    def fit(self, X: Mapping[str, np.ndarray], y: Sequence, unlabelled: Mapping[str, np.ndarray] | None = None) -> ModelSearch:
        """Score the candidates on shared folds of (``X``, ``y``), choose, refit the winner on all of it.

        ``unlabelled`` ({modality: (m, d)}) feeds self-training where it is used; a candidate on some
        modalities only is left out when it could not predict every labelled and unlabelled item.
        """
        if self.self_training not in SELF_TRAINING_CHOICES:
            raise UnknownNameError("self-training setting", str(self.self_training), SELF_TRAINING_CHOICES)
        available = modality_order(k for k in X if not is_parts_key(k))
        y = _labels(y, self.multilabel)
        candidates = self._candidate_list(available, parts=any(is_parts_key(k) for k in X))
        for c in candidates:
            c.modalities_in(available)
        has_pool = unlabelled is not None and len(next(iter(unlabelled.values()), [])) > 0
        if self.candidates == AUTO:  # a model on some modalities must be able to predict every item we know of
            def rows_with(m):
                rows = [~np.isnan(np.asarray(X[m], dtype=np.float32)).any(axis=1)]
                if has_pool:  # a modality the pool lacks is missing on every pool row
                    rows.append(~np.isnan(np.asarray(unlabelled[m], dtype=np.float32)).any(axis=1) if m in unlabelled
                                else np.zeros(len(next(iter(unlabelled.values()))), dtype=bool))
                return np.concatenate(rows)

            present = {m: rows_with(m) for m in available}
            candidates = [c for c in candidates if c.modalities is None
                          or np.logical_or.reduce([present[m] for m in c.modalities]).all()]
        splits = make_splits(y, folds=self.folds, repeats=self.repeats, multilabel=self.multilabel,
                             random_state=self.random_state)
        if not splits:
            self.best_ = candidates[0]
            self.results_, self.evaluation_ = [], "none (too few labels per class to cross-validate)"
            self.reason_ = f"{self.best_.name}: too few labels per class to compare models"
            self.metrics_ = {"accuracy": float("nan"), "macro_f1": float("nan"), "ece": float("nan")}
        else:
            repeats = _n_repeats(splits, len(y))
            n_folds = len(splits) // repeats
            self.evaluation_ = f"{n_folds}-fold cross-validation" + (f" x {repeats}" if repeats > 1 else "")
            jobs = [(c.name, c.build(**self._build_options()), c.modalities_in(available), c.self_training) for c in candidates]
            if self.reference is not None:
                ref_name, ref_est, ref_mods = self.reference
                ref_mods = [m for m in ref_mods if m in available] or available
                jobs.append((ref_name, ref_est, ref_mods, True))
            results = self._race(jobs, X, y, splits, unlabelled if has_pool else None,
                                 n_reference=int(self.reference is not None))
            scored = list(zip(candidates, results[: len(candidates)]))
            self.best_, self.reason_ = self._choose(scored, len(available))
            if self.self_training != "off" and has_pool and self.best_.model not in NO_SELF_TRAINING and not self.multilabel \
                    and not self.best_.self_training:
                with_st = Candidate(self.best_.model, self.best_.modalities, True)
                st_result = self._run([(with_st.name, with_st.build(**self._build_options()), with_st.modalities_in(available), True)],
                                      X, y, splits, unlabelled)[0]
                results.append(st_result)
                base = dict(scored)[self.best_]
                if self.self_training == "on" or (st_result.error is None and st_result.mean > base.mean):
                    self.reason_ += ("; self-training on (forced)" if self.self_training == "on" else
                                     f"; self-training raises it to {st_result.mean:.3f}")
                    self.best_ = with_st
                else:
                    self.reason_ += f"; self-training left off ({st_result.mean:.3f} with it)"
            self.results_ = results
            self.metrics_ = self._winner_metrics(y)
        if self.refit:
            self.best_estimator_ = self.best_.fit(X, list(y) if self.multilabel else y,
                                                  unlabelled if has_pool else None, **self._build_options())
        self.metrics_["candidates"] = [dict(r.row(), chosen=r.name == self.best_.name) for r in self.results_]
        self.metrics_["chosen"] = self.best_.name
        self.metrics_["why"] = self.reason_
        self.metrics_["evaluation"] = self.evaluation_
        if self.reference is not None:
            ref = next((r for r in self.results_ if r.name == self.reference[0]), None)
            self.metrics_["reference"] = ref.row() if ref else None
        return self

    def result(self, name: str) -> CandidateResult | None:
        return next((r for r in self.results_ if r.name == name), None)

    def _winner_metrics(self, y) -> dict[str, Any]:
        r = self.result(self.best_.name)
        out: dict[str, Any] = {"accuracy": float(np.mean(r.accuracy)) if r.accuracy else float("nan"),
                               "macro_f1": r.mean, "macro_f1_sd": r.sd, "macro_f1_se": r.se, "ece": float("nan")}
        if not self.multilabel and r.oof_probs is not None:
            classes = sorted(set(y.tolist()))
            targets = np.searchsorted(classes, y)
            logits = np.log(np.clip(r.oof_probs, 1e-12, 1.0))
            temperature = fit_temperature(logits, targets)
            z = logits / temperature
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out["ece"] = expected_calibration_error(p, targets)
            out["ece_uncalibrated"] = expected_calibration_error(r.oof_probs, targets)
        return out


@dataclass(frozen=True)
class SearchRecord:
    """What the last full search saw; refits go on with its choice until `search_due` says otherwise."""

    n_labels: int
    classes: frozenset[str] | None  # None: not recorded (versions from before refits)
    macro_f1: float | None
    se: float = 0.0


def search_due(last: SearchRecord | None, n_labels: int, classes, refit_macro_f1: float | None = None, *,
               growth: float = SEARCH_GROWTH) -> str | None:
    """Why the full search should run again, or None while refitting its choice is enough: only when
    it can change the answer — no search yet, a class it never saw, the labels grown by ``growth``
    since, or the refit's cross-validated macro-F1 more than the search's standard error below the
    search's (after `SEARCH_MIN_NEW_LABELS` new labels, so noise on a few labels does not rerun it)."""
    if last is None:
        return "no model search yet"
    new = sorted(set(classes) - last.classes) if last.classes is not None else []
    if new:
        return f"class {new[0]!r} appeared since the last search"
    if n_labels >= last.n_labels * (1 + growth):
        return f"labels grew from {last.n_labels} to {n_labels} since the last search"
    if refit_macro_f1 is not None and last.macro_f1 is not None and n_labels >= last.n_labels + SEARCH_MIN_NEW_LABELS \
            and refit_macro_f1 < last.macro_f1 - last.se - 1e-9:
        return (f"the refit's macro-F1 fell to {refit_macro_f1:.3f}, below the search's {last.macro_f1:.3f} "
                f"(standard error {last.se:.3f})")
    return None


def _clearly_behind(result: CandidateResult, leader: CandidateResult) -> bool:
    """Whether ``result`` trails ``leader`` on every fold scored so far, and by more than
    `RACE_MARGIN` on average: folds are shared, so the comparison is paired, and a candidate this
    far behind after the first folds is not within one standard error of the best at the end."""
    gaps = np.subtract(leader.macro_f1, result.macro_f1)
    return bool(len(gaps) and (gaps > 0).all() and gaps.mean() > RACE_MARGIN)


def _n_repeats(splits, n: int) -> int:
    """How many times every item was tested (the number of repeats)."""
    counts = np.zeros(n, dtype=int)
    for _, test in splits:
        counts[test] += 1
    return max(1, int(counts.max())) if n else 1


def _safe_score(*args):
    """`_score_split`, with a failure (e.g. a fold whose training part has one class) as its message."""
    try:
        return _score_split(*args)
    except Exception as exc:  # reported in the candidate table; the other candidates go on
        return f"{type(exc).__name__}: {exc}"


class TrainingSchedule:
    """The backend's two speeds of training over a growing set of labels, in memory (for active-learning
    simulations): each `fit` runs the full `ModelSearch` when `search_due` says it could change the
    answer, and otherwise refits the last search's choice on the labels given — as the backend's
    trainer does after each correction (it runs the search in the background).

    Attributes: ``estimator_`` (fitted on the last `fit`'s labels), ``training_`` (``search`` or
    ``refit``), ``searches_`` (searches so far), ``config_`` (the last search's choice). Refits are
    not scored here, so a lower refit score never calls a search: that trigger is the backend's.
    """

    def __init__(self, head: str = AUTO, *, self_training: str = "auto", random_state: int = 0,
                 n_jobs: int | None = None):
        self.head = head
        self.self_training = self_training
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.config_: Candidate | None = None
        self.last_search_: SearchRecord | None = None
        self.searches_ = 0

    def fit(self, X: Mapping[str, np.ndarray], y, unlabelled: Mapping[str, np.ndarray] | None = None) -> TrainingSchedule:
        labels = _labels(y, False)
        classes = sorted(set(labels.tolist()))
        due = self.config_ is None or (self.head == AUTO and search_due(self.last_search_, len(labels), classes))
        if not due:
            self.estimator_ = self.config_.fit(X, labels, unlabelled if self.config_.self_training else None,
                                               random_state=self.random_state)
            self.training_ = "refit"
            return self
        if self.head != AUTO and self.self_training != "auto":  # nothing to choose
            forced = Candidate.parse(self.head)
            self.config_ = Candidate(forced.model, forced.modalities, self.self_training == "on")
            self.estimator_ = self.config_.fit(X, labels, unlabelled, random_state=self.random_state)
        else:
            search = ModelSearch(self.head, self_training=self.self_training, random_state=self.random_state,
                                 n_jobs=self.n_jobs)
            search.fit(X, labels, unlabelled=unlabelled)
            self.config_, self.estimator_ = search.best_, search.best_estimator_
            self.last_search_ = SearchRecord(len(labels), frozenset(classes), finite_or_none(search.metrics_["macro_f1"]),
                                             float(search.metrics_.get("macro_f1_se") or 0.0))
        self.training_, self.searches_ = "search", self.searches_ + 1
        return self


def finite_or_none(value) -> float | None:
    """A score as a float, or None where it is missing or NaN (too few labels to cross-validate)."""
    return None if value is None or np.isnan(value) else float(value)


def fit_model(X: dict[str, np.ndarray], y, *, head: str = "auto", unlabelled: dict[str, np.ndarray] | None = None,
              self_training: str = "auto", random_state: int = 0, n_jobs: int | None = None):
    """The model `retrain` would serve for these labels (`ModelSearch`'s choice, refitted on all of
    them), so simulated learning curves describe the production model. A forced model with
    self-training forced on or off leaves nothing to choose: it is fitted without scoring."""
    if head != "auto" and self_training != "auto":
        forced = Candidate.parse(head)
        return Candidate(forced.model, forced.modalities, self_training == "on").fit(X, y, unlabelled,
                                                                                     random_state=random_state)
    search = ModelSearch(head, self_training=self_training, random_state=random_state, n_jobs=n_jobs)
    return search.fit(X, y, unlabelled=unlabelled).best_estimator_

"""Many annotations per item → one training label, and how far the annotators agree.

Teams put several annotators on a task to measure and raise quality; taking the most recent
annotation throws that away. Here every live annotation counts:

- `consensus`: majority vote, ties broken by the most recent annotation; where annotators overlap
  enough (`DawidSkene.enough_overlap`), a Dawid–Skene estimate instead, which weighs each annotator
  by a confusion matrix learnt from all items (Dawid & Skene, 1979), so two careful annotators
  outvote three careless ones. Multi-label items take each label a majority chose.
- `agreement_report`: per item, the share of annotators who agree with the consensus; per
  annotator, agreement with the consensus and the estimated accuracy; Krippendorff's alpha
  (nominal) over the items with two or more annotations.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Annotation:
    """One live human label: ``item`` (a primary key), ``annotator`` (Label Studio user, or the
    label's key when unknown), ``labels`` (sorted values), ``at`` (last update)."""

    item: int
    annotator: str
    labels: tuple[str, ...]
    at: datetime


def _latest_per_annotator(annotations: Sequence[Annotation]) -> dict[int, list[Annotation]]:
    """Item → one annotation per annotator (their latest), oldest first."""
    latest: dict[tuple[int, str], Annotation] = {}
    for a in sorted(annotations, key=lambda a: a.at):
        latest[(a.item, a.annotator)] = a
    by_item: dict[int, list[Annotation]] = defaultdict(list)
    for a in sorted(latest.values(), key=lambda a: a.at):
        by_item[a.item].append(a)
    return dict(by_item)


def majority_vote(by_item: dict[int, list[Annotation]]) -> dict[int, list[str]]:
    """Item → the label set most annotators gave (ties: the most recent of the tied); a multi-label
    item (any annotation with several labels) keeps each label that at least half chose."""
    out = {}
    for item, group in by_item.items():
        if any(len(a.labels) > 1 for a in group):
            counts = Counter(label for a in group for label in a.labels)
            chosen = sorted(label for label, n in counts.items() if 2 * n >= len(group))
            out[item] = chosen or list(group[-1].labels)
            continue
        votes = Counter(a.labels for a in group)
        top = max(votes.values())
        out[item] = list(next(a.labels for a in reversed(group) if votes[a.labels] == top))
    return out


class DawidSkene:
    """Dawid–Skene EM for single-label items: class priors and one confusion matrix per annotator.

    Parameters
    ----------
    max_iter : int, default=50
    smoothing : float, default=0.01
        Added to every confusion count, so an annotator seen on few items is not certain.
    """

    def __init__(self, max_iter: int = 50, smoothing: float = 0.01, tol: float = 1e-6):
        self.max_iter, self.smoothing, self.tol = max_iter, smoothing, tol

    @staticmethod
    def enough_overlap(by_item: dict[int, list[Annotation]], *, min_items: int = 10, min_share: float = 0.2) -> bool:
        """Whether the annotators overlap enough to learn how reliable each is: at least ``min_items``
        items, and ``min_share`` of all, with two or more annotators."""
        multi = sum(len(group) >= 2 for group in by_item.values())
        return multi >= min_items and multi >= min_share * len(by_item)

    def fit(self, by_item: dict[int, list[Annotation]]) -> DawidSkene:
        self.items_ = list(by_item)
        self.annotators_ = sorted({a.annotator for group in by_item.values() for a in group})
        self.classes_ = sorted({a.labels[0] for group in by_item.values() for a in group if a.labels})
        n, m, k = len(self.items_), len(self.annotators_), len(self.classes_)
        who = {name: j for j, name in enumerate(self.annotators_)}
        cls = {c: j for j, c in enumerate(self.classes_)}
        counts = np.zeros((n, m, k))  # counts[i, j, l]: annotator j said class l for item i
        for i, item in enumerate(self.items_):
            for a in by_item[item]:
                if a.labels:
                    counts[i, who[a.annotator], cls[a.labels[0]]] = 1.0
        # start from the vote shares, as Dawid and Skene did
        post = counts.sum(1) + 1e-9
        post /= post.sum(1, keepdims=True)
        for _ in range(self.max_iter):
            prior = post.mean(0)
            # confusion[j, t, l]: P(annotator j says l | true class t)
            confusion = np.einsum("it,ijl->jtl", post, counts) + self.smoothing
            confusion /= confusion.sum(2, keepdims=True)
            log_post = np.log(prior)[None, :] + np.einsum("ijl,jtl->it", counts, np.log(confusion))
            new = np.exp(log_post - log_post.max(1, keepdims=True))
            new /= new.sum(1, keepdims=True)
            change = np.abs(new - post).max()
            post = new
            if change < self.tol:
                break
        self.posterior_, self.prior_, self.confusion_ = post, prior, confusion
        # an annotator's accuracy: the chance they give the true class, under the estimated priors
        self.accuracy_ = {name: float(np.sum(prior * np.diag(confusion[j]))) for name, j in who.items()}
        return self

    def labels(self) -> dict[int, list[str]]:
        return {item: [self.classes_[int(self.posterior_[i].argmax())]] for i, item in enumerate(self.items_)}


def _consensus(by_item: dict[int, list[Annotation]]) -> tuple[dict[int, list[str]], DawidSkene | None]:
    """The labels, and the Dawid–Skene fit where the overlap allowed one (its per-annotator accuracies
    are part of the agreement report)."""
    labels = majority_vote(by_item)
    single = {item: group for item, group in by_item.items() if all(len(a.labels) <= 1 for a in group)}
    if not (single and DawidSkene.enough_overlap(single)):
        return labels, None
    ds = DawidSkene().fit(single)
    labels.update(ds.labels())
    return labels, ds


def consensus(annotations: Sequence[Annotation]) -> dict[int, list[str]]:
    """Item → its training label from every live annotation (see the module docstring)."""
    return _consensus(_latest_per_annotator(annotations))[0]


def krippendorff_alpha(by_item: dict[int, list[Annotation]]) -> float | None:
    """Krippendorff's alpha for nominal data over items with two or more annotations (1: perfect
    agreement, 0: chance); None when no item has two."""
    units = [[a.labels for a in group] for group in by_item.values() if len(group) >= 2]
    if not units:
        return None
    values = sorted({v for unit in units for v in unit})
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in units:
        counts = np.bincount([index[v] for v in unit], minlength=len(values)).astype(float)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    n_c = coincidence.sum(1)
    total = n_c.sum()
    observed = coincidence.sum() - np.trace(coincidence)
    expected = (total ** 2 - np.sum(n_c ** 2)) / (total - 1)
    return 1.0 if expected == 0 else float(1 - observed / expected)


def agreement_report(annotations: Sequence[Annotation]) -> dict[str, Any]:
    """Agreement per item and per annotator with the consensus (see the module docstring)."""
    by_item = _latest_per_annotator(annotations)
    labels, ds = _consensus(by_item)
    items = {item: sum(list(a.labels) == labels[item] for a in group) / len(group)
             for item, group in by_item.items()}
    per_annotator: dict[str, list[bool]] = defaultdict(list)
    for item, group in by_item.items():
        for a in group:
            per_annotator[a.annotator].append(list(a.labels) == labels[item])
    estimated = ds.accuracy_ if ds is not None else {}
    multi = [item for item, group in by_item.items() if len(group) >= 2]
    return {
        "items": len(by_item), "items_with_several_annotators": len(multi),
        "method": "dawid-skene" if estimated else "majority vote",
        "krippendorff_alpha": krippendorff_alpha(by_item),
        "disagreements": sorted((item for item in multi if items[item] < 1.0), key=lambda i: items[i]),
        "item_agreement": items, "consensus": labels,
        "annotators": {name: {"items": len(hits), "agreement": round(float(np.mean(hits)), 4),
                              "estimated_accuracy": round(estimated[name], 4) if name in estimated else None}
                       for name, hits in sorted(per_annotator.items())},
    }

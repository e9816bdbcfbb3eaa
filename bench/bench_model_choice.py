"""Model choice per project (issue: models chosen on the project's own labels).

Does the default `retrain` (`ModelSearch`, "auto") hold up where one modality is unreliable? Settings:
OpenMoji-10 (image + caption; 552 emoji, 10 classes) clean and with 30 / 50 / 70 % of captions swapped
for a caption of another class, and digits (image + a partly informative text) clean and with the
text corrupted further at two levels. For each setting, seed and label budget (100, 300): auto
against every fusion head, a plain scikit-learn logistic regression on the concatenated embeddings
(the 20-line script a user would write) and the best single modality (the better of our linear and
network models on it), all on the same labelled items, scored on the same held-out 30 %.
Also: the time auto selection takes on 1,000 labels x 3 modalities at the default encoders' widths,
and racing (candidates dropped from the folds once clearly behind) against the same search without
it, run by run: the same winner, accuracy, time.
"""

from __future__ import annotations

import time

import numpy as np

from bench._common import parser, timer, write_results


def swap_captions(items: list[dict], fraction: float, seed: int) -> list[str]:
    """Texts where ``fraction`` of the items carry a caption of an item of another class."""
    rng = np.random.default_rng(seed)
    labels = np.array([it["label"] for it in items])
    out = [it["text"] for it in items]
    for i in np.flatnonzero(rng.random(len(items)) < fraction):
        donors = np.flatnonzero(labels != labels[i])
        out[i] = items[int(rng.choice(donors))]["text"]
    return out


def corrupt_digit_text(items: list[dict], fraction: float, seed: int) -> list[str]:
    """Texts where ``fraction`` of the items name a wrong digit."""
    from bench.datasets import DIGIT_NAMES

    rng = np.random.default_rng(seed)
    out = [it["text"] for it in items]
    for i in np.flatnonzero(rng.random(len(items)) < fraction):
        wrong = (int(items[i]["label"]) + int(rng.integers(1, 10))) % 10
        out[i] = f"the form shows the number {DIGIT_NAMES[wrong]}"
    return out


def split(y: np.ndarray, seed: int, n_labels: int, test_fraction: float = 0.3):
    """(labelled rows, test rows): a stratified test split, then ``n_labels`` drawn from the rest
    with at least two per class."""
    from annotator.active.simulation import stratified_holdout

    rng = np.random.default_rng(seed)
    test = stratified_holdout(y, rng, test_fraction)
    rest = rng.permutation(np.flatnonzero(~test))
    first = np.concatenate([rest[y[rest] == c][:2] for c in np.unique(y)])
    others = np.setdiff1d(rest, first)
    train = np.concatenate([first, rng.permutation(others)[: max(0, n_labels - len(first))]])
    return np.sort(train), np.flatnonzero(test)


def run_setting(features: dict, y: np.ndarray, seeds: list[int], sizes: list[int], heads: list[str]) -> dict:
    from sklearn.linear_model import LogisticRegression

    from annotator.fusion import FusionClassifier, LinearClassifier, ModelSearch

    modalities = list(features)
    out = {}
    for size in sizes:
        acc: dict[str, list[float]] = {}
        chosen, auto_s, full_chosen, full_s = [], [], [], []
        for seed in seeds:
            tr, te = split(y, seed, size)
            sub = lambda rows, ms=None: {m: features[m][rows] for m in (ms or modalities)}  # noqa: E731
            score = lambda clf, ms=None: float((np.array(clf.predict(sub(te, ms))) == y[te]).mean())  # noqa: E731
            with timer() as t:
                search = ModelSearch(random_state=seed).fit(sub(tr), y[tr])
            auto_s.append(t())
            chosen.append(search.best_.name)
            with timer() as t:  # the same search without the race over folds: the choice before racing
                full = ModelSearch(random_state=seed, race=False).fit(sub(tr), y[tr])
            full_s.append(t())
            full_chosen.append(full.best_.name)
            acc.setdefault("auto without racing", []).append(score(full.best_estimator_, full.best_estimator_.modalities_))
            acc.setdefault("auto", []).append(score(search.best_estimator_, search.best_estimator_.modalities_))
            for head in heads:
                acc.setdefault(head, []).append(score(FusionClassifier(head=head, random_state=seed).fit(sub(tr), y[tr])))
            concat = np.hstack([features[m] for m in modalities])
            lr = LogisticRegression(max_iter=3000).fit(concat[tr], y[tr])
            acc.setdefault("sklearn logreg (concatenated)", []).append(float((lr.predict(concat[te]) == y[te]).mean()))
            for m in modalities:
                acc.setdefault(f"{m} only (network)", []).append(
                    score(FusionClassifier(head="concat", random_state=seed).fit(sub(tr, [m]), y[tr]), [m]))
                acc.setdefault(f"{m} only (linear)", []).append(score(LinearClassifier().fit(sub(tr, [m]), y[tr]), [m]))
        means = {k: float(np.mean(v)) for k, v in acc.items()}
        singles = {k: v for k, v in means.items() if " only " in k}
        best_single = max(singles, key=singles.get)
        baseline = means["sklearn logreg (concatenated)"]
        out[str(size)] = {
            "accuracy": {k: {"mean": means[k], "per_seed": v} for k, v in acc.items()},
            "chosen": chosen, "auto_seconds_mean": float(np.mean(auto_s)),
            "racing": {"chosen_without": full_chosen, "seconds_without_mean": float(np.mean(full_s)),
                       "speedup": float(np.sum(full_s) / np.sum(auto_s)),
                       "same_winner": [a == b for a, b in zip(chosen, full_chosen)],
                       "accuracy_gap_points": 100 * (means["auto"] - means["auto without racing"])},
            "best_single": best_single,
            "auto_minus_logreg_points": 100 * (means["auto"] - baseline),
            "auto_minus_best_single_points": 100 * (means["auto"] - means[best_single]),
            "auto_minus_best_head_points": 100 * (means["auto"] - max(means[h] for h in heads)),
            "meets_logreg_target": bool(means["auto"] >= baseline - 0.005),
            "meets_single_target": bool(means["auto"] >= means[best_single]),
        }
    return out


def timing_section(n: int = 1000, seed: int = 0) -> dict:
    """Auto selection on ``n`` labels x 3 modalities at the default encoders' widths (1280 image,
    384 text, 384 audio), 10 classes: synthetic vectors, since the cost depends on sizes, not content."""
    from annotator.fusion import ModelSearch

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = {}
    for m, d, s in (("image", 1280, 0.05), ("text", 384, 0.1), ("audio", 384, 0.02)):
        a = rng.normal(size=(n, d)) + (np.eye(10)[y] @ rng.normal(size=(10, d))) * s
        X[m] = (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
    pool = {m: a[:300] for m, a in X.items()}
    with timer() as t:
        search = ModelSearch(random_state=seed).fit(X, y.astype(str), unlabelled=pool)
    return {"labels": n, "modalities": 3, "seconds": t(), "target_seconds": 60, "meets_target": bool(t() <= 60),
            "chosen": search.best_.name, "candidates": len(search.results_), "evaluation": search.evaluation_}


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    sizes = list(next(iter(results.values())))
    fig, axes = plt.subplots(len(sizes), 1, figsize=(max(10, 1.6 * len(names)), 4 * len(sizes)), squeeze=False)
    for ax, size in zip(axes[:, 0], sizes):
        keys = ["auto", "sklearn logreg (concatenated)", "best single", "best head"]
        colours = ["#2f6db5", "#c9a227", "#9aa5b1", "#6a9f58"]
        for j, key in enumerate(keys):
            vals = []
            for name in names:
                r = results[name][size]["accuracy"]
                if key == "best single":
                    vals.append(r[results[name][size]["best_single"]]["mean"])
                elif key == "best head":
                    vals.append(max(v["mean"] for k, v in r.items() if k in ("concat", "weighted", "attention", "gated", "tensor")))
                else:
                    vals.append(r[key]["mean"])
            ax.bar(np.arange(len(names)) + (j - 1.5) * 0.2, vals, 0.2, label=key, color=colours[j])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title(f"{size} labels")
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()

    from annotator.encoders import load_encoder
    from annotator.fusion import HEADS
    from bench.datasets import FINE_CATEGORY_RANGES, digits_items, openmoji_items, render_svg

    seeds = list(range(1 if args.smoke else args.seeds))
    sizes = [60] if args.smoke else [100, 300]
    heads = ["concat", "attention"] if args.smoke else list(HEADS)
    enc = {m: load_encoder(m, device="cpu") for m in ("text", "image")}
    t0 = time.time()
    moji = openmoji_items(FINE_CATEGORY_RANGES)
    digits = digits_items(200 if args.smoke else 600, seed=0, audio=False)
    if args.smoke:
        moji = moji[::3]
    for it in moji:
        it["image"] = render_svg(it["svg"], 96)
        it["text"] = f"an emoji of {it['caption']}"
    moji_image, digit_image = enc["image"].encode([it["image"] for it in moji]), enc["image"].encode([it["image"] for it in digits])
    settings = {}
    for q in ([0.5] if args.smoke else [0.0, 0.3, 0.5, 0.7]):  # smoke: two settings, each kind's code once
        texts = swap_captions(moji, q, seed=1) if q else [it["text"] for it in moji]
        settings[f"openmoji-10 captions swapped {int(q * 100)}%"] = (
            {"image": moji_image, "text": enc["text"].encode(texts)}, np.array([it["label"] for it in moji]))
    for q in ([0.0] if args.smoke else [0.0, 0.4, 0.8]):
        texts = corrupt_digit_text(digits, q, seed=1) if q else [it["text"] for it in digits]
        settings[f"digits text corrupted {int(q * 100)}%"] = (
            {"image": digit_image, "text": enc["text"].encode(texts)}, np.array([it["label"] for it in digits]))
    data_s = time.time() - t0
    results = {}
    for name, (features, y) in settings.items():
        results[name] = run_setting(features, y, seeds, sizes, heads)
        for size, r in results[name].items():
            acc = r["accuracy"]
            print(f"{name:<36} {size:>4} labels: auto {acc['auto']['mean']:.3f} ({', '.join(sorted(set(r['chosen'])))}) | "
                  f"logreg {acc['sklearn logreg (concatenated)']['mean']:.3f} | {r['best_single']} "
                  f"{acc[r['best_single']]['mean']:.3f} | auto-logreg {r['auto_minus_logreg_points']:+.1f} pt, "
                  f"auto-single {r['auto_minus_best_single_points']:+.1f} pt, auto-best head "
                  f"{r['auto_minus_best_head_points']:+.1f} pt; auto {r['auto_seconds_mean']:.1f} s", flush=True)
    timing = timing_section(60 if args.smoke else 1000)
    print(f"auto selection, {timing['labels']} labels x 3 modalities: {timing['seconds']:.1f} s "
          f"(target 60 s); chose {timing['chosen']}")
    name = "bench_model_choice" + ("_smoke" if args.smoke else "")
    cells = [r for s in results.values() for r in s.values()]
    same = [w for r in cells for w in r["racing"]["same_winner"]]
    close = [abs(r["racing"]["accuracy_gap_points"]) <= 0.5 for r in cells]
    racing = {"runs": len(same), "same_winner": int(sum(same)), "cells_within_half_a_point": int(sum(close)),
              "speedup": float(sum(r["racing"]["seconds_without_mean"] for r in cells)
                               / sum(r["auto_seconds_mean"] for r in cells)),
              "targets": {"agreement": 0.9, "speedup": 3}}
    print(f"racing: the same winner as without it in {racing['same_winner']}/{racing['runs']} searches, within 0.5 "
          f"point of its accuracy in {racing['cells_within_half_a_point']}/{len(cells)} cells; {racing['speedup']:.2f}x "
          "faster (target 3x)")
    write_results(name, {"data_build_s": data_s, "seeds": seeds, "sizes": sizes, "settings": results,
                         "timing": timing, "racing": racing,
                         "summary": {"cells": len(cells),
                                     "meets_logreg_target": sum(r["meets_logreg_target"] for r in cells),
                                     "meets_single_target": sum(r["meets_single_target"] for r in cells)}}, args.out)
    plot(results, args.out / f"{name}.png")


if __name__ == "__main__":
    main()

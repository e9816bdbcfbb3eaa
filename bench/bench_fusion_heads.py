"""Fusion heads vs single modalities on offline multimodal data (issue: models).

Data sets: digits (image + noisy text + noisy spoken digit, each partly informative), OpenMoji
(image + caption, four categories) and OpenMoji match (the label is whether the caption describes
this image; emoji of two categories swap captions, so each modality alone says nothing, only the
pair does: `match_pairs`). Over several seeds: accuracy and
macro-F1 of every single modality and every fusion head, co-attention over part-level features
(`coattention`: text tokens, image regions), kernel-level fusion (`kernel`: multiple-kernel
learning with kernel ridge), a logistic-regression early-fusion baseline, accuracy with one
modality removed at test time, ECE before/after temperature scaling, training time and inference
time per 1,000 items, encode throughput per modality (batched vs one-at-a-time baseline; with part
features vs without), Whisper dynamic vs 30 s padding, and re-scoring throughput from cached
embeddings vs re-encoding.
"""

from __future__ import annotations

import time

import numpy as np

from bench._common import parser, timer, write_results


def encode_dataset(items: list[dict], encoders: dict, modalities: list[str]) -> tuple[dict, dict]:
    """Features {modality: (n, d), "text:parts": (n, P * d)} (part-level features from the encoders
    that give them, in the same forward pass) and encode throughput {modality: items/s}."""
    from annotator.encoders.base import parts_key

    features, throughput = {}, {}
    for m in modalities:
        inputs = [it[m] for it in items]
        with timer() as t:
            if getattr(encoders[m], "n_parts", 0):
                features[m], parts = encoders[m].encode_parts(inputs)
                features[parts_key(m)] = parts.reshape(len(parts), -1)
            else:
                features[m] = encoders[m].encode(inputs)
        throughput[m] = len(inputs) / t()
    return features, throughput


def parts_encode_cost(encoder, inputs: list, repeats: int = 2) -> dict:
    """Items/s of the pooled vectors alone vs with part-level features (the same forward pass plus
    copying and normalising the parts), alternating, best of ``repeats``."""
    pooled, with_parts = [], []
    for _ in range(repeats):
        with timer() as t:
            encoder.encode(inputs)
        pooled.append(len(inputs) / t())
        with timer() as t:
            encoder.encode_parts(inputs)
        with_parts.append(len(inputs) / t())
    return {"pooled_items_per_s": max(pooled), "with_parts_items_per_s": max(with_parts),
            "slowdown": max(pooled) / max(with_parts)}


def match_pairs(items: list[dict], features: dict, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Emoji paired across categories, (i, j); each pair gives four rows: image i with caption i
    and image j with caption j ("match"), image i with caption j and image j with caption i
    ("mismatch"). Every image and every caption is then once matched and once not, so neither
    modality alone says anything; only the two together do. Returns the rows' features (image
    rows, text rows and text parts taken by index), labels and groups (the pair: a split keeps a
    pair's four rows on one side, or a model could learn a caption's label from its other row)."""
    rng = np.random.default_rng(seed)
    labels = [it["label"] for it in items]
    waiting: list[int] = []
    pairs = []
    for i in rng.permutation(len(items)):
        partner = next((w for w in waiting if labels[w] != labels[i]), None)
        if partner is None:
            waiting.append(int(i))
        else:
            waiting.remove(partner)
            pairs.append((partner, int(i)))
    image_rows = np.array([[i, j, i, j] for i, j in pairs]).ravel()
    text_rows = np.array([[i, j, j, i] for i, j in pairs]).ravel()
    out = {k: a[text_rows if k.startswith("text") else image_rows] for k, a in features.items()}
    y = np.array(["match", "match", "mismatch", "mismatch"] * len(pairs))
    return out, y, np.repeat(np.arange(len(pairs)), 4)


def audio_encoders_compared(items: list[dict], text: np.ndarray, seeds: list[int], whisper) -> dict:
    """Whisper (frozen), MFCC statistics and the MFCC-GRU (trained on each seed's training split,
    on its labels) on `tone_sequences`: audio alone and fused with the text (concat head), same
    splits; plus the GRU's training time."""
    import tempfile
    from pathlib import Path

    from annotator.encoders import load_encoder
    from annotator.encoders.mfcc_gru import MFCCGRUEncoder, train_mfcc_gru
    from annotator.fusion import FusionClassifier

    clips = [it["audio"] for it in items]
    y = np.array([it["label"] for it in items])
    fixed = {"whisper": whisper.encode(clips), "mfcc statistics": load_encoder("audio", "mfcc").encode(clips)}
    rows: dict[str, dict[str, list[float]]] = {}
    gru_train_s = []
    for seed in seeds:
        tr, te = stratified_split(y, seed)
        with tempfile.TemporaryDirectory() as folder, timer() as t:
            train_mfcc_gru([clips[i] for i in np.flatnonzero(tr)], Path(folder) / "gru", labels=list(y[tr]),
                           random_state=seed)
            audio = {**fixed, "mfcc-gru": MFCCGRUEncoder(Path(folder) / "gru").encode(clips)}
        gru_train_s.append(t())
        text_only = FusionClassifier(head="concat", random_state=seed).fit({"text": text[tr]}, y[tr])
        rows.setdefault("text only", {}).setdefault("accuracy", []).append(
            float((np.array(text_only.predict({"text": text[te]})) == y[te]).mean()))
        for name, vectors in audio.items():
            for setting, X in (("audio only", {"audio": vectors}), ("fused with text", {"audio": vectors, "text": text})):
                clf = FusionClassifier(head="concat", random_state=seed).fit({m: a[tr] for m, a in X.items()}, y[tr])
                acc = float((np.array(clf.predict({m: a[te] for m, a in X.items()})) == y[te]).mean())
                rows.setdefault(name, {}).setdefault(setting, []).append(acc)
    summary = {name: {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in r.items()}
               for name, r in rows.items()}
    return {"n_items": len(items), "n_classes": int(len(set(y))), "seeds": seeds, "results": summary,
            "mfcc_gru_train_s": {"mean": float(np.mean(gru_train_s)), "std": float(np.std(gru_train_s))}}


def one_at_a_time_rate(encoder, inputs, n: int = 16) -> float:
    with timer() as t:
        for x in inputs[:n]:
            encoder.encode([x])
    return min(n, len(inputs)) / t()


def stratified_split(y: np.ndarray, seed: int, test_fraction: float = 0.3, groups: np.ndarray | None = None):
    """(train, test) masks, stratified by class; with ``groups``, whole groups go to one side (the
    match setting's two pairs of one emoji: split apart, a model could learn the image's label
    from its twin, which has the other label)."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        names = rng.permutation(np.unique(groups))
        test = np.isin(groups, names[: int(round(len(names) * test_fraction))])
        return ~test, test
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: max(1, int(round(len(rows) * test_fraction)))]] = True
    return ~test, test


def build(head: str, seed: int):
    """A fusion head, or the kernel-level fusion model (``kernel``)."""
    from annotator.fusion import FusionClassifier
    from annotator.fusion.kernel import KernelFusionClassifier

    return KernelFusionClassifier(random_state=seed) if head == "kernel" else FusionClassifier(head=head, random_state=seed)


def run_dataset(name: str, features: dict, y: np.ndarray, seeds: list[int], heads: list[str],
                groups: np.ndarray | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from annotator.fusion import FusionClassifier
    from annotator.fusion.metrics import evaluate

    from annotator.encoders.base import base_modality, is_parts_key

    rows: dict[str, list[dict]] = {}
    removal: dict[str, dict[str, list[float]]] = {}
    train_s: dict[str, list[float]] = {}
    predict_s: dict[str, list[float]] = {}
    modalities = [m for m in features if not is_parts_key(m)]
    for seed in seeds:
        tr, te = stratified_split(y, seed, groups=groups)
        sub = lambda rows_mask, ms=None: {k: a[rows_mask] for k, a in features.items()  # noqa: E731
                                          if base_modality(k) in (ms or modalities)}
        for m in modalities:  # single modality, same estimator
            clf = FusionClassifier(head="concat", random_state=seed).fit(sub(tr, [m]), y[tr])
            rows.setdefault(f"{m} only", []).append(evaluate(clf, sub(te, [m]), list(y[te])))
        concat_all = np.hstack([features[m] for m in modalities])
        lr = LogisticRegression(C=1.0, max_iter=3000).fit(concat_all[tr], y[tr])
        pred = lr.predict(concat_all[te])
        rows.setdefault("logreg early fusion", []).append(
            {"accuracy": float((pred == y[te]).mean()), "macro_f1": float(f1_score(y[te], pred, average="macro"))})
        for head in heads:
            with timer() as t:
                clf = build(head, seed).fit(sub(tr), y[tr])
            train_s.setdefault(head, []).append(t())
            with timer() as t:
                clf.predict_proba(sub(te))
            predict_s.setdefault(head, []).append(t() / int(te.sum()))
            rows.setdefault(head, []).append(evaluate(clf, sub(te), list(y[te])))
            for m in modalities:
                X = {k: a for k, a in sub(te).items() if base_modality(k) != m}
                X[m] = np.full_like(features[m][te], np.nan)
                acc = float((np.array(clf.predict(X)) == y[te]).mean())
                removal.setdefault(head, {}).setdefault(f"without {m}", []).append(acc)

    def agg(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    summary = {k: {metric: agg([r[metric] for r in v]) for metric in ("accuracy", "macro_f1")}
               for k, v in rows.items()}
    for head in heads:
        summary[head]["ece_uncalibrated"] = agg([r["ece_uncalibrated"] for r in rows[head]])
        summary[head]["ece"] = agg([r["ece"] for r in rows[head]])
        summary[head]["train_s"] = agg(train_s[head])
        summary[head]["train_s_per_1000_items"] = agg([1000 * t / int(tr.sum()) for t in train_s[head]])
        summary[head]["predict_ms_per_1000_items"] = agg([1e6 * t for t in predict_s[head]])
        summary[head]["modality_removed_accuracy"] = {k: agg(v) for k, v in removal[head].items()}
    best_single = max((k for k in summary if k.endswith(" only")), key=lambda k: summary[k]["accuracy"]["mean"])
    best_head = max(heads, key=lambda h: summary[h]["accuracy"]["mean"])
    return {"n_items": int(len(y)), "n_classes": int(len(np.unique(y))), "modalities": modalities,
            "seeds": seeds, "results": summary, "best_single_modality": best_single, "best_head": best_head,
            "fusion_gain_accuracy_points": 100 * (summary[best_head]["accuracy"]["mean"] - summary[best_single]["accuracy"]["mean"]),
            "fusion_beats_best_single": bool(summary[best_head]["accuracy"]["mean"] > summary[best_single]["accuracy"]["mean"])}


def rescoring_throughput(features: dict, y: np.ndarray, n_rows: int, text_encode_rate: float) -> dict:
    from annotator.fusion import FusionClassifier
    from annotator.scoring import score_items

    clf = FusionClassifier(head="attention").fit(features, y)
    reps = -(-n_rows // len(y))
    big = {m: np.tile(a, (reps, 1))[:n_rows] for m, a in features.items()}
    score_items(clf, {m: a[:1000] for m, a in big.items()})  # warm-up
    with timer() as t:
        score_items(clf, big)
    rate = n_rows / t()
    return {"rows": n_rows, "items_per_s": rate, "vs_reencoding_text_ratio": rate / text_encode_rate,
            "target_items_per_s": 100_000, "meets_target": bool(rate >= 100_000)}


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        keys = list(res["results"])
        means = [res["results"][k]["accuracy"]["mean"] for k in keys]
        stds = [res["results"][k]["accuracy"]["std"] for k in keys]
        colors = ["#9aa5b1" if k.endswith(" only") else "#c9a227" if k.startswith("logreg") else "#2f6db5" for k in keys]
        ax.bar(range(len(keys)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(keys)), keys, rotation=40, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: accuracy over {len(res['seeds'])} seeds (n={res['n_items']})")
        ax.axhline(res["results"][res["best_single_modality"]]["accuracy"]["mean"], ls="--", c="grey", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--digits", type=int, default=600, help="digits items (audio synthesis dominates the cost)")
    args = p.parse_args()
    import torch

    from annotator.encoders import load_encoder
    from annotator.encoders.audio import WhisperEncoder
    from annotator.fusion import HEADS
    from bench.datasets import digits_items, have_espeak, openmoji_items, render_svg, tone_sequences

    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = list(range(args.seeds if not args.smoke else 1))
    heads = [*HEADS, "kernel"] if not args.smoke else ["concat", "attention", "coattention", "kernel"]
    enc = {m: load_encoder(m, device="cpu") for m in ("text", "image")}
    audio = have_espeak()
    if audio:
        enc["audio"] = load_encoder("audio", device="cpu")

    t0 = time.time()
    digits = digits_items(60 if args.smoke else args.digits, seed=0, audio=audio)
    moji = openmoji_items()
    if args.smoke:
        moji = moji[::5]
    for it in moji:
        it["image"] = render_svg(it["svg"], 96)
        it["text"] = f"an emoji of {it['caption']}"
    data_s = time.time() - t0

    dig_mods = ["image", "text"] + (["audio"] if audio else [])
    dig_feat, dig_rate = encode_dataset(digits, enc, dig_mods)
    moji_feat, moji_rate = encode_dataset(moji, enc, ["image", "text"])
    encode = {m: {"batched_items_per_s": dig_rate[m],
                  "one_at_a_time_items_per_s": one_at_a_time_rate(enc[m], [it[m] for it in digits])}
              for m in dig_mods}
    for m in encode:
        encode[m]["batching_speedup"] = encode[m]["batched_items_per_s"] / encode[m]["one_at_a_time_items_per_s"]

    y_dig = np.array([it["label"] for it in digits])
    y_moji = np.array([it["label"] for it in moji])
    match_feat, y_match, emoji = match_pairs(moji, moji_feat)
    results = {"digits": run_dataset("digits", dig_feat, y_dig, seeds, heads),
               "openmoji": run_dataset("openmoji", moji_feat, y_moji, seeds, heads),
               "openmoji match": run_dataset("openmoji match", match_feat, y_match, seeds, heads, groups=emoji)}
    parts_cost = {m: parts_encode_cost(enc[m], [it[m] for it in digits][: 32 if args.smoke else 300])
                  for m in ("text", "image")}

    whisper = None
    if audio:
        clips = [it["audio"] for it in digits]
        padded = WhisperEncoder(pad_to_window=True)
        n_cmp = min(len(clips), 60 if args.smoke else 200)
        with timer() as t_pad:
            padded_vecs = padded.encode(clips[:n_cmp])
        with timer() as t_dyn:
            dyn_vecs = enc["audio"].encode(clips[:n_cmp])
        mfcc = load_encoder("audio", "mfcc").encode(clips)
        audio_only = {}
        for label, feats in (("whisper dynamic", dig_feat["audio"]), ("mfcc baseline", mfcc)):
            audio_only[label] = run_dataset("a", {"audio": feats}, y_dig, seeds, ["concat"])["results"]["concat"]["accuracy"]
        sub_y = y_dig[:n_cmp]
        for label, feats in (("whisper padded 30 s (subset)", padded_vecs), ("whisper dynamic (same subset)", dyn_vecs)):
            audio_only[label] = run_dataset("a", {"audio": feats}, sub_y, seeds, ["concat"])["results"]["concat"]["accuracy"]
        whisper = {"dynamic_vs_padded_speedup": t_pad() / t_dyn(), "clips": n_cmp,
                   "audio_only_accuracy": audio_only,
                   "mean_cosine_dynamic_vs_padded": float(np.mean(np.sum(padded_vecs * dyn_vecs, axis=1)))}

    tones = tone_sequences(60 if args.smoke else 300)
    whisper_encoder = enc.get("audio") or load_encoder("audio", device="cpu")
    audio_compared = audio_encoders_compared(tones, enc["text"].encode([it["text"] for it in tones]), seeds,
                                             whisper_encoder)
    pooled = {m: a for m, a in dig_feat.items() if m in dig_mods}  # the attention head reads no parts
    rescoring = rescoring_throughput(pooled, y_dig, 20_000 if args.smoke else 200_000, dig_rate["text"])
    out = {"data_build_s": data_s, "encode_throughput": encode, "openmoji_encode_items_per_s": moji_rate,
           "part_features_encode_cost": parts_cost, "audio_encoders_on_tone_sequences": audio_compared,
           "datasets": results, "whisper_dynamic_vs_padded": whisper, "rescoring": rescoring,
           "audio_available": audio}
    name = "bench_fusion_heads" + ("_smoke" if args.smoke else "")
    write_results(name, out, args.out)
    plot(results, args.out / f"{name}.png")
    for dname, res in results.items():
        print(f"\n{dname} (n={res['n_items']}, {res['n_classes']} classes, seeds={res['seeds']})")
        for k, v in res["results"].items():
            extra = ""
            if "ece" in v:
                extra = (f"  ECE {v['ece_uncalibrated']['mean']:.3f}->{v['ece']['mean']:.3f}  "
                         f"train {v['train_s_per_1000_items']['mean']:.1f}s/1k  "
                         f"predict {v['predict_ms_per_1000_items']['mean']:.0f}ms/1k")
            print(f"  {k:<22} acc {v['accuracy']['mean']:.3f}±{v['accuracy']['std']:.3f}  "
                  f"F1 {v['macro_f1']['mean']:.3f}{extra}")
        print(f"  best head {res['best_head']} vs best single {res['best_single_modality']}: "
              f"{res['fusion_gain_accuracy_points']:+.1f} points")
    print("part-level features, encode cost: " + ", ".join(
        f"{m} {v['pooled_items_per_s']:.0f} -> {v['with_parts_items_per_s']:.0f} items/s ({v['slowdown']:.2f}x)"
        for m, v in parts_cost.items()))
    print(f"\nencode (items/s, batched vs one at a time): "
          + ", ".join(f"{m} {v['batched_items_per_s']:.0f} ({v['batching_speedup']:.1f}x)" for m, v in encode.items()))
    if whisper:
        print(f"whisper dynamic vs padded: {whisper['dynamic_vs_padded_speedup']:.1f}x faster; audio-only accuracy "
              + ", ".join(f"{k} {v['mean']:.3f}" for k, v in whisper["audio_only_accuracy"].items()))
    print(f"audio encoders on tone sequences ({audio_compared['n_classes']} orders of the same three tones; "
          f"text alone {audio_compared['results']['text only']['accuracy']['mean']:.3f}): " + ", ".join(
              f"{name} {r['audio only']['mean']:.3f} alone / {r['fused with text']['mean']:.3f} fused"
              for name, r in audio_compared["results"].items() if name != "text only")
          + f"; mfcc-gru trains in {audio_compared['mfcc_gru_train_s']['mean']:.1f} s")
    print(f"re-scoring from cache: {rescoring['items_per_s']:.0f} items/s "
          f"({rescoring['vs_reencoding_text_ratio']:.0f}x re-encoding text); target 100,000")


if __name__ == "__main__":
    main()

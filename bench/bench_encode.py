"""Encoders near the hardware's limit (issue: runtime): torch eager vs ONNX Runtime fp32 vs int8.

In one run, on this machine:
- the FLOP roofline, from a float32 matmul probe (numpy and torch; the faster);
- per encoder: items/s of the network alone at batch 1 and at its best batch, for every runtime,
  FLOPs per item counted by torch's FLOP counter, and the share of the roofline reached; then
  end to end from decoded inputs (preprocessing included) at the encoder's own batch size;
- Whisper (CTranslate2, already an optimised runtime; not exported): audio seconds per second,
  int8 (the default on a CPU) vs float32;
- pre-label accuracy of each runtime's vectors on the fusion benchmark's data (OpenMoji image +
  caption, digits image + text): logistic regression, 5-fold, the same folds for every runtime.
Ratios are against torch eager measured in the same run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import parser, timer, write_results

RUNTIMES = {"torch": {"runtime": "torch"}, "onnx fp32": {"runtime": "onnx"}, "onnx int8": {"runtime": "onnx", "int8": True}}


def roofline_gflops(seconds: float = 2.0) -> dict:
    """Sustained float32 GFLOP/s of a 2048² matmul, numpy (BLAS) and torch."""
    import torch

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    for name, mm in (("numpy", lambda: a @ a), ("torch", lambda t=torch.from_numpy(a): t @ t)):
        mm()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            mm()
            count += 1
        out[name] = 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9
    return {**out, "best": max(out.values())}


def rate(fn, n_items: int, seconds: float) -> float:
    """Items/s of ``fn`` (which handles ``n_items``), after one warm-up call."""
    fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += n_items
        if time.perf_counter() - start >= seconds:
            return count / (time.perf_counter() - start)


def flops_per_image(encoder) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from annotator.encoders.image import _pooled_features

    net = _pooled_features(encoder._load_net())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    return float(counter.get_total_flops())


def flops_per_text(encoder, tokens: dict) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder._model[0].auto_model(**{k: torch.from_numpy(v) for k, v in tokens.items()})
    return float(counter.get_total_flops()) / len(next(iter(tokens.values())))


def bench_image(images, batches, seconds, export_dir) -> dict:
    from annotator.encoders import load_encoder

    out = {}
    for label, kwargs in RUNTIMES.items():
        enc = load_encoder("image", device="cpu", export_dir=export_dir, **kwargs)
        prepared = np.stack([enc.prepare(img) for img in images[:max(batches)]])
        by_batch = {b: rate(lambda b=b: enc._forward(pixels=np.ascontiguousarray(prepared[:b])), b, seconds)
                    for b in batches}
        best = max(by_batch, key=by_batch.get)
        with timer() as t:
            enc.encode(images)
        out[label] = {"network_items_per_s": by_batch, "batch_1": by_batch[1], "best_batch": best,
                      "best": by_batch[best], "end_to_end_items_per_s": len(images) / t(),
                      "encoder_batch": enc.cpu_batch_size, "name": enc.name}
    return out


def bench_text(texts, batches, seconds, export_dir) -> dict:
    from annotator.encoders import load_encoder

    out = {}
    for label, kwargs in RUNTIMES.items():
        enc = load_encoder("text", device="cpu", export_dir=export_dir, **kwargs)
        by_batch = {}
        for b in batches:
            enc.batch_size = enc.onnx_batch_size = b
            by_batch[b] = rate(lambda: enc.encode(texts), len(texts), seconds)
        best = max(by_batch, key=by_batch.get)
        out[label] = {"items_per_s": by_batch, "batch_1": by_batch[1], "best_batch": best, "best": by_batch[best],
                      "name": enc.name}
    return out


def bench_whisper(clips, seconds) -> dict:
    from annotator.encoders.audio import WhisperEncoder

    audio_s = sum(len(c) for c in clips) / 16000
    out = {}
    for label in ("int8", "float32"):
        enc = WhisperEncoder(device="cpu", compute_type=label)
        out[label] = {"audio_s_per_s": rate(lambda: enc.encode(clips), 1, seconds) * audio_s}
    return out


def accuracy(features_by_runtime: dict, y: np.ndarray, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(min(5, int(np.unique(y, return_counts=True)[1].min())), shuffle=True, random_state=seed)
    return {label: float(cross_val_score(LogisticRegression(max_iter=2000, C=1.0), x, y, cv=folds).mean())
            for label, x in features_by_runtime.items()}


def pre_label_accuracy(datasets: dict, export_dir) -> dict:
    """Accuracy of logistic regression on [image | text] vectors made by each runtime."""
    from annotator.encoders import load_encoder

    out = {}
    for name, items in datasets.items():
        y = np.array([it["label"] for it in items])
        feats = {}
        for label, kwargs in RUNTIMES.items():
            img = load_encoder("image", device="cpu", export_dir=export_dir, **kwargs)
            txt = load_encoder("text", device="cpu", export_dir=export_dir, **kwargs)
            feats[label] = np.hstack([img.encode([it["image"] for it in items]), txt.encode([it["text"] for it in items])])
        acc = accuracy(feats, y)
        out[name] = {"n_items": len(items), "accuracy": acc,
                     "drop_points": {k: 100 * (acc["torch"] - v) for k, v in acc.items()}}
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image (network, best batch)", doc["image"], "best"), ("image (end to end)", doc["image"],
              "end_to_end_items_per_s"), ("text (best batch)", doc["text"], "best")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (title, res, key) in zip(axes, panels):
        labels = list(res)
        values = [res[k][key] for k in labels]
        ax.bar(labels, values, color=["#9aa5b1", "#2f6db5", "#c9a227"])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f}/s\n×{v / values[0]:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("items/s")
        ax.set_ylim(0, max(values) * 1.3)
    fig.suptitle(f"encoders on {os.cpu_count()} CPU cores; roofline {doc['roofline_gflops']['best']:.0f} "
                 "GFLOP/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    args = p.parse_args()
    from PIL import Image

    from bench.datasets import digits_items, openmoji_items, render_svg

    seconds = 0.3 if args.smoke else args.seconds
    batches = [1, 4] if args.smoke else [1, 4, 8, 16, 32]
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)) for _ in range(8 if args.smoke else 128)]
    moji = openmoji_items()[:: 12 if args.smoke else 1]
    for it in moji:
        it["image"], it["text"] = render_svg(it["svg"], 96), f"an emoji of {it['caption']}"
    digits = digits_items(60 if args.smoke else 500, seed=0, audio=False)
    texts = [it["text"] for it in moji[:256]] + [f"{it['caption']}: " + "a longer product description " * 12
                                                 for it in moji[:64]]
    with tempfile.TemporaryDirectory() as export_dir:  # exports made in this run (their cost is not timed)
        roof = roofline_gflops(0.5 if args.smoke else 3.0)
        image = bench_image(photos, batches, seconds, Path(export_dir))
        text = bench_text(texts, batches, seconds, Path(export_dir))
        from annotator.encoders import load_encoder

        img_flops = flops_per_image(load_encoder("image", device="cpu", runtime="torch"))
        txt_enc = load_encoder("text", device="cpu", runtime="torch")
        txt_flops = flops_per_text(txt_enc, txt_enc._tokens(texts[:32]))
        # throughput does not depend on what is said: 5 s of noise-like clips (no espeak needed)
        clips = [(0.1 * rng.standard_normal(16000 * 5)).astype(np.float32) for _ in range(2 if args.smoke else 16)]
        whisper = bench_whisper(clips, seconds)
        accuracy_by_runtime = pre_label_accuracy({"openmoji": moji, "digits": digits}, Path(export_dir))
    for res, flops in ((image, img_flops), (text, txt_flops)):
        for label in res:
            res[label]["gflops_per_s"] = res[label]["best"] * flops / 1e9
            # int8 runs on VNNI integer units, whose peak is several times the fp32 matmul's: its
            # share of the fp32 roofline can pass 1
            res[label]["fp32_roofline_share"] = res[label]["gflops_per_s"] / roof["best"]
            res[label]["speedup_vs_torch"] = res[label]["best"] / res["torch"]["best"]
    for label in image:
        image[label]["end_to_end_speedup_vs_torch"] = (image[label]["end_to_end_items_per_s"]
                                                      / image["torch"]["end_to_end_items_per_s"])
    doc = {"roofline_gflops": roof, "flops_per_item": {"image": img_flops, "text_mean": txt_flops},
           "image": image, "text": text, "whisper_ct2": whisper, "pre_label_accuracy": accuracy_by_runtime,
           "targets": {"image_speedup_vs_torch": 2.0,
                       "image_met": image["onnx fp32"]["speedup_vs_torch"] >= 2.0,
                       "fp32_accuracy_drop_points_max": 0.5,
                       "fp32_accuracy_met": all(r["drop_points"]["onnx fp32"] <= 0.5
                                                for r in accuracy_by_runtime.values())}}
    name = "bench_encode" + ("_smoke" if args.smoke else "")
    write_results(name, doc, args.out)
    plot(doc, args.out / f"{name}.png")
    for label in image:
        print(f"image {label:10s} best {image[label]['best']:7.1f}/s (batch {image[label]['best_batch']}, "
              f"×{image[label]['speedup_vs_torch']:.2f}, {100 * image[label]['fp32_roofline_share']:.0f}% of the fp32 "
              f"roofline); "
              f"end to end {image[label]['end_to_end_items_per_s']:.1f}/s")
    for label in text:
        print(f"text  {label:10s} best {text[label]['best']:7.1f}/s (batch {text[label]['best_batch']}, "
              f"×{text[label]['speedup_vs_torch']:.2f})")
    print("whisper (CTranslate2) audio s/s:", {k: round(v["audio_s_per_s"]) for k, v in whisper.items()})
    print("pre-label accuracy:", {k: v["accuracy"] for k, v in accuracy_by_runtime.items()})


if __name__ == "__main__":
    main()

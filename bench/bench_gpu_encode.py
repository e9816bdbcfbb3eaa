"""GPU encode throughput of a ViT-B/32-class CLIP, and faiss search on the GPU (issues: models,
runtime; run where a GPU is present: ``python bench/bench_gpu_encode.py [pairs] [out folder]``).

The model has CLIP ViT-B/32's architecture (transformers' CLIPConfig defaults: 224 px, patch 32,
12 × 768 vision layers, 12 × 512 text layers) with random weights: throughput depends on the
architecture, not the weights, and no checkpoint can be downloaded here. Baseline in the same run:
fp32 with the CPU image processor; compared with bf16 autocast + GPU preprocessing.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build_clip(root: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    cfg = CLIPConfig()  # ViT-B/32 sizes
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id, cfg.text_config.pad_token_id = 0, 1, 1
    path = root / "clip-b32"
    CLIPModel(cfg).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(path)
    return path


def main() -> None:
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from annotator.encoders.clip import CLIPImageEncoder, CLIPTextEncoder

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("bench/results")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)) for _ in range(n)]
    texts = [f"a photo of a {w} on a {v}" for w, v in zip(rng.choice(["cat", "dog", "car", "tree"], n),
                                                             rng.choice(["sofa", "road", "hill", "boat"], n))]
    with tempfile.TemporaryDirectory() as tmp:
        path = build_clip(Path(tmp))
        results = {}
        for label, fast in (("fp32, CPU preprocessing (baseline)", False), ("bf16 autocast, GPU preprocessing", True)):
            img = CLIPImageEncoder(str(path), device="cuda", batch_size=512)
            txt = CLIPTextEncoder(str(path), device="cuda", batch_size=1024)
            if not fast:
                img._encode_batch = _fp32_cpu_batch(img)
                txt._encode_batch = _fp32_text_batch(txt)
            img.encode(images[:512]), txt.encode(texts[:1024])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            iv = img.encode(images)
            tv = txt.encode(texts)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            results[label] = {"pairs_per_s": n / dt, "seconds": dt, "dims": [iv.shape[1], tv.shape[1]]}
        base = results["fp32, CPU preprocessing (baseline)"]["pairs_per_s"]
        fast = results["bf16 autocast, GPU preprocessing"]["pairs_per_s"]
        doc = {"benchmark": "bench_gpu_encode", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "pairs": n,
               "model": "CLIP ViT-B/32 architecture, random weights", "results": results,
               "faiss_search": faiss_search(100_000 if n < 4096 else 1_000_000),
               "speedup_vs_baseline": fast / base, "target_pairs_per_s": 5000, "meets_target": fast >= 5000}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_gpu_encode.json").write_text(json.dumps(doc, indent=2))
        print(json.dumps(doc, indent=2))


def faiss_search(n: int, dim: int = 384, queries: int = 1000, k: int = 10) -> dict:
    """Exact search of ``queries`` vectors in ``n`` through our `VectorIndex`: the GPU copy vs the
    CPU one, same vectors, in this run; where faiss-gpu is not installed, says so."""
    from annotator.index.vector_index import VectorIndex, gpu_available

    if not gpu_available():
        return {"skipped": "faiss-gpu is not installed (pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12)"}
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    out = {"vectors": n, "dim": dim, "queries": queries}
    for label, use_gpu in (("cpu", False), ("gpu", True)):
        index = VectorIndex.build(ids, vectors, use_gpu=use_gpu, exact_threshold=n + 1)
        index.search(vectors[:10], k)  # warm-up (the GPU copy is made here)
        t0 = time.perf_counter()
        found = index.search(vectors[:queries], k)
        out[label] = {"queries_per_s": queries / (time.perf_counter() - t0)}
        out[label + "_top1_is_self"] = float(np.mean(np.asarray(found[1])[:, 0] == ids[:queries]))
    out["gpu_speedup"] = out["gpu"]["queries_per_s"] / out["cpu"]["queries_per_s"]
    return out


def _fp32_cpu_batch(enc):
    def run(images):
        batch = enc._processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
        with enc._torch.inference_mode():
            out = enc._model.get_image_features(pixel_values=batch.to(enc.device))
        from annotator.encoders.clip import _features

        return _features(out).float().cpu().numpy()
    return run


def _fp32_text_batch(enc):
    def run(texts):
        batch = enc._processor(text=texts, return_tensors="pt", padding=True, truncation=True).to(enc.device)
        with enc._torch.inference_mode():
            out = enc._model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        from annotator.encoders.clip import _features

        return _features(out).float().cpu().numpy()
    return run


if __name__ == "__main__":
    main()

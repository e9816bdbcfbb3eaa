"""`annotator simulate` as a person runs it (issue: simulate fast enough to use).

The whole command in a fresh process on OpenMoji-10 captions (552 emoji names in ten imbalanced
classes, text only; the embeddings are cached by a first run, so both timed runs start warm):
margin against random, budget 120, step 10, 3 seeds, with the model `retrain` would choose.
Every curve and full-pool fit in worker processes (the default) against the same tasks one after
another in this process, each search using every core for its folds (``--jobs 1``), in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import parser, write_results


def captions_manifest(path: Path, every: int = 1) -> Path:
    from bench.datasets import FINE_CATEGORY_RANGES, openmoji_items

    items = openmoji_items(FINE_CATEGORY_RANGES)[::every]
    path.write_text("\n".join(json.dumps({"id": it["id"], "text": it["caption"], "label": it["label"]})
                              for it in items) + "\n")
    return path


def run_simulate(manifest: Path, data_dir: Path, *, budget: int, step: int, seeds: int, jobs: int | None,
                 head: str = "auto") -> dict:
    env = {**os.environ, "ANNOTATOR_DATA_DIR": str(data_dir)}
    if head != "auto":  # a forced model: nothing to choose
        env["ANNOTATOR_SELF_TRAINING"] = "off"
    command = [sys.executable, "-m", "annotator.cli.main", "simulate", str(manifest), "--strategy", "margin",
               "--budget", str(budget), "--step", str(step), "--seeds", str(seeds), "--head", head, "--json"]
    if jobs:
        command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    result = json.loads(proc.stdout)
    return {"wall_s": wall, "full_accuracy": result["full_accuracy"], "items": result["items"],
            "labels_to_95pct_of_full": result["labels_to_95pct_of_full"],
            "curves": {name: [round(p["accuracy"], 4) for p in curve] for name, curve in result["curves"].items()}}


def main() -> None:
    args = parser(__doc__).parse_args()
    budget, step, seeds, every = (20, 10, 1, 8) if args.smoke else (120, 10, 3, 1)
    head = "logreg" if args.smoke else "auto"  # the smoke run checks the script, not the model search
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = captions_manifest(tmp / "captions.jsonl", every)
        if not args.smoke:  # the smoke run only checks that the benchmark runs
            print("warming the embedding cache", file=sys.stderr)
            run_simulate(manifest, tmp / "data", budget=step * 2, step=step, seeds=1, jobs=1)
        runs = {}
        for name, jobs in (("one process (--jobs 1)", 1), ("worker processes (default)", None)):
            print(f"simulate: {name}", file=sys.stderr)
            runs[name] = run_simulate(manifest, tmp / "data", budget=budget, step=step, seeds=seeds, jobs=jobs,
                                      head=head)
    one, many = runs["one process (--jobs 1)"], runs["worker processes (default)"]
    results = {"settings": {"budget": budget, "step": step, "seeds": seeds, "cpus": os.cpu_count()}, "runs": runs,
               "speedup_vs_one_process": one["wall_s"] / many["wall_s"],
               "same_curves": one["curves"] == many["curves"]}
    print(f"one process {one['wall_s']:.1f} s, worker processes {many['wall_s']:.1f} s "
          f"({results['speedup_vs_one_process']:.2f}x); same curves: {results['same_curves']}", file=sys.stderr)
    write_results("bench_simulate" + ("_smoke" if args.smoke else ""), results, args.out)


if __name__ == "__main__":
    main()

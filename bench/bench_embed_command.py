"""`annotator embed` end to end, as a person runs it (issue: encoding end to end).

The whole command in a fresh process (start-up, model loading, fetching, decoding, the network,
the cache, the index), on photo-sized JPEGs (640 × 480) imported into a fresh data folder: the
default runtime (ONNX Runtime on a CPU) against ``ANNOTATOR_RUNTIME=torch`` in the same run, at two
sizes. The steady-state rate is the marginal one between the two sizes (fixed costs cancel). Each
run's per-stage seconds come from ``embed --json`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import parser, write_results

RUNTIMES = ("torch", "auto")


def write_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` smooth, noisy 640 × 480 JPEGs (what decoding a camera's picture costs) and a manifest."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:480, 0:640]
    manifest = folder / "items.jsonl"
    with manifest.open("w") as f:
        for i in range(n):
            base = np.stack([(x * rng.uniform(0.1, 0.5) + y * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                             for _ in range(3)], -1)
            pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
            path = folder / f"photo{i:05d}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            f.write(json.dumps({"id": f"photo{i}", "image": str(path)}) + "\n")
    return manifest


def run_embed(manifest: Path, runtime: str, data_dir: Path) -> dict:
    """Import ``manifest`` into a fresh data folder, then time ``annotator embed --json`` in its own process."""
    env = {**os.environ, "ANNOTATOR_DATA_DIR": str(data_dir), "ANNOTATOR_RUNTIME": runtime}
    command = [sys.executable, "-m", "annotator.cli.main"]
    subprocess.run([*command, "import", str(manifest), "--project", "bench", "--json"], env=env, check=True,
                   capture_output=True)
    started = time.perf_counter()
    proc = subprocess.run([*command, "embed", "--project", "bench", "--json"], env=env, check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    report = json.loads(proc.stdout)
    return {"wall_s": wall, "items_per_s": report["items"] / wall, "encoded": report["encoded"],
            "in_command_s": report["seconds"], "stages": report["stages"]}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs=2, default=(200, 2000), metavar=("SMALL", "LARGE"))
    args = p.parse_args()
    small, large = (8, 24) if args.smoke else args.sizes
    results: dict = {"sizes": [small, large], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifests = {n: write_photos(tmp / f"photos-{n}", n) for n in (small, large)}
        for runtime in RUNTIMES:
            for n in (small, large):
                print(f"embed {n} photos, runtime {runtime}", file=sys.stderr)
                results["runs"][f"{runtime} {n}"] = run_embed(manifests[n], runtime, tmp / f"data-{runtime}-{n}")
    runs = results["runs"]
    for runtime in RUNTIMES:
        marginal = runs[f"{runtime} {large}"]["wall_s"] - runs[f"{runtime} {small}"]["wall_s"]
        results[f"{runtime} steady_items_per_s"] = (large - small) / marginal if marginal > 0 else None
    for n in (small, large):
        results[f"whole_command_speedup_vs_torch {n}"] = runs[f"torch {n}"]["wall_s"] / runs[f"auto {n}"]["wall_s"]
    for key, value in results.items():
        if key not in ("runs", "sizes"):
            print(f"{key}: {value:.2f}" if value is not None else f"{key}: n/a", file=sys.stderr)
    write_results("bench_embed_command" + ("_smoke" if args.smoke else ""), results, args.out)


if __name__ == "__main__":
    main()

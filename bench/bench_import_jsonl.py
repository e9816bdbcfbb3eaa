"""`annotator import` throughput on a JSONL manifest (target: 10,000 lines in under 10 s).

Baselines measured in the same run: (1) parsing the same lines with json.loads alone, the floor;
(2) the naive store pattern, one ORM insert and one transaction per row, on a 1,000-row slice.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from bench._common import parser, timer, write_results


def make_manifest(path: Path, n: int, rng: random.Random) -> None:
    words = "red green blue car cat dog house tree night street small large".split()
    with path.open("w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(12))
            fh.write(json.dumps({"id": f"item-{i}", "text": text, "label": rng.choice(["a", "b", "c"])}) + "\n")


def main() -> None:
    args = parser(__doc__).parse_args()
    n = 300 if args.smoke else 10_000
    n_naive = 100 if args.smoke else 1_000
    from annotator.config import Settings
    from annotator.importer import import_manifest
    from annotator.store import open_store
    from annotator.store.models import Item

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = tmp / "m.jsonl"
        make_manifest(manifest, n, random.Random(0))

        with timer() as parse_t:
            rows = [json.loads(line) for line in manifest.open()]

        store = open_store(Settings(data_dir=tmp / "a"))
        with timer() as import_t:
            with store.session() as s:
                report = import_manifest(s, project_name="bench", manifest=manifest)
        assert report.imported == n, report.skipped[:3]
        with timer() as reimport_t:
            with store.session() as s:
                import_manifest(s, project_name="bench", manifest=manifest)
        store.close()

        naive = open_store(Settings(data_dir=tmp / "b"))
        with naive.session() as s:
            from annotator.store import repo
            pid = repo.get_or_create_project(s, name="bench").id
        with timer() as naive_t:
            for row in rows[:n_naive]:
                with naive.session() as s:
                    s.add(Item(project_id=pid, external_id=row["id"], data={"text": row["text"]}))
        naive.close()

    naive_per_item = naive_t() / n_naive
    results = {
        "lines": n,
        "import_s": import_t(), "reimport_s": reimport_t(), "parse_only_s": parse_t(),
        "items_per_s": n / import_t(),
        "naive_per_row_transaction_items_per_s": 1 / naive_per_item,
        "speedup_vs_naive": naive_per_item * n / import_t(),
        "import_over_parse_ratio": import_t() / parse_t(),
        "target": "10,000 lines < 10 s",
        "meets_target": bool(args.smoke or import_t() < 10.0),
    }
    for key, value in results.items():
        print(f"{key:>42}: {value:.3f}" if isinstance(value, float) else f"{key:>42}: {value}")
    write_results("bench_import_jsonl" + ("_smoke" if args.smoke else ""), results, args.out)


if __name__ == "__main__":
    main()

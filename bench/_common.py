"""Shared helpers for benchmarks: a timer, machine/library facts, and the results writer.

Every benchmark measures its own baseline in the same run (these machines are noisy) and reports
ratios; results go to bench/results/<name>.json (+ .png where a plot helps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` is the elapsed seconds."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def machine() -> dict:
    libs = {}
    for name in ("torch", "numpy", "faiss-cpu", "sqlalchemy", "sentence-transformers", "transformers"):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "libraries": libs}


def parser(description: str, sections: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """``--smoke`` and ``--out``; with ``sections``, also ``--sections`` (read it with `chosen_sections`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI: checks the benchmark runs")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    if sections:
        p.add_argument("--sections", default=",".join(sections),
                       help="comma-separated sections to run; the others keep their figures from the last results file")
    return p


def chosen_sections(p: argparse.ArgumentParser, args: argparse.Namespace, sections: tuple[str, ...]) -> list[str]:
    """The sections ``--sections`` names; an unknown one is a usage error."""
    chosen = [x.strip() for x in args.sections.split(",") if x.strip()]
    if unknown := set(chosen) - set(sections):
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(sections)}")
    return chosen


def write_results(name: str, results: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **results}
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path

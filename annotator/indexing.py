"""``annotator embed``: encode a project's items and bring its search indexes up to date."""

from __future__ import annotations

import time

from annotator.batch import BatchEngine, LocalEngine
from annotator.config import Settings
from annotator.embedding import EmbedReport
from annotator.encoders.registry import Encoders
from annotator.index.cross_modal import ProjectIndex
from annotator.store import Store, repo


def embed_project(store: Store, settings: Settings, *, project_name: str, encoders: Encoders | None = None,
                  progress: bool = True, index: bool = True, engine: BatchEngine | None = None) -> EmbedReport:
    """Encode every item of a project that has no cached vector yet (on ``engine``: this process
    by default, or a Ray cluster), then bring the project's search indexes up to date
    (``annotator embed``): new items are searchable when it returns."""
    started = time.perf_counter()
    encoders = encoders or Encoders(settings)
    engine = engine or LocalEngine(settings)
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name=project_name))
        listed = time.perf_counter()
        report = engine.embed(items, encoders=encoders, progress=progress)
    report.stages.add("list_items", listed - started)
    if index:
        with report.stages.timed("index"):
            report.index = ProjectIndex(settings, project_name, encoders).update(store, items=items).to_dict()
    report.seconds = time.perf_counter() - started
    return report

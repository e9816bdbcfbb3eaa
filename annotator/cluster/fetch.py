"""The media fetch stage of a Ray pipeline (tasks). Kept apart from the actors' module so that a
fetch task's worker imports only what fetching needs, not torch: tasks start in a second, not in
the several seconds of CPU each actor pays once."""

from __future__ import annotations

import pandas as pd

from annotator.config import Settings
from annotator.errors import MediaError
from annotator.media import MediaFetcher, sha256


def fetch_media(batch: pd.DataFrame, *, settings: Settings) -> pd.DataFrame:
    """Fetch each media row's ``ref`` (threads, with the fetcher's retries): adds ``data``
    (bytes), ``sha`` and ``error``; text rows pass through. Rows with a Label Studio ``task`` (≥ 0)
    read local files only inside the media roots, as in the local path."""
    rows = batch.to_dict("records")
    media = [r for r in rows if r["modality"] != "text"]
    with MediaFetcher(settings) as fetcher:
        got = iter(fetcher.map(lambda r: fetcher.fetch(r["ref"], task_id=r["task"] if r["task"] >= 0 else None,
                                                       trusted=r["task"] < 0), media))
    data, sha, error = [], [], []
    for r in rows:
        g = next(got) if r["modality"] != "text" else None
        data.append(g if isinstance(g, bytes) else None)
        sha.append(sha256(g) if isinstance(g, bytes) else r["sha"])
        error.append(str(g) if isinstance(g, MediaError) else "")
    return batch.assign(data=data, sha=sha, error=error)

"""Train a project's own audio encoder (`annotator.encoders.mfcc_gru`) on its labelled audio, or,
without labels of two classes, on its audio paired with the items' texts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from annotator.config import Settings
from annotator.embedding import decode_item
from annotator.encoders.mfcc_gru import default_path, train_mfcc_gru
from annotator.encoders.registry import Encoders
from annotator.errors import MediaError, NotEnoughLabelsError, NotFoundError
from annotator.media import MediaFetcher
from annotator.store import Store, repo


def train_project_audio_encoder(store: Store, settings: Settings, *, project_name: str, out: Path | None = None,
                                encoders: Encoders | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit the MFCC-GRU on the project's audio and write it to ``out`` (default: where
    ``ANNOTATOR_AUDIO_MODEL=mfcc-gru`` looks). A clip that cannot be read is skipped and reported."""
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        items = [it for it in repo.list_items(s, project=project) if it.data.get("audio")]
        labels = repo.current_labels(s, project=project)
    if not items:
        raise NotFoundError(f"project {project_name!r} has no audio items")
    clips, kept, failed = [], [], []
    with MediaFetcher(settings) as fetcher:
        for it in tqdm(items, desc="read audio", unit="clip", file=sys.stderr, disable=not progress):
            try:
                clips.append(decode_item("audio", it, fetcher)[0])
                kept.append(it)
            except MediaError as exc:
                failed.append({"id": it.external_id, "error": str(exc)})
    labelled = [(clip, labels[it.id][0]) for clip, it in zip(clips, kept) if it.id in labels]
    target = Path(out) if out else default_path(settings.data_dir)
    if len({label for _, label in labelled}) >= 2:
        result = train_mfcc_gru([c for c, _ in labelled], target, labels=[label for _, label in labelled])
    else:
        paired = [(clip, it.data["text"]) for clip, it in zip(clips, kept) if it.data.get("text")]
        if len(paired) < 2:
            raise NotEnoughLabelsError(f"project {project_name!r}: training an audio encoder needs labelled audio of "
                                       "two classes, or audio items with text to learn from")
        texts = (encoders or Encoders(settings)).get("text").encode([text for _, text in paired])
        result = train_mfcc_gru([c for c, _ in paired], target, paired=texts)
    use = "mfcc-gru" if out is None else str(target)
    return {**result, "failed": failed, "use": f"ANNOTATOR_AUDIO_MODEL={use}"}

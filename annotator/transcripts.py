"""Transcripts of items' audio (Whisper): made once per (audio content, model) and kept in the
database, so every project and worker reuses them.

Label Studio projects use them two ways (`LabelConfig.wants_transcripts`): a ``<TextArea>`` on the
audio is pre-filled with the transcript, and where the project has no text object the transcript
becomes the item's text, so fusion, zero-shot and search see what was said.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from tqdm import tqdm

from annotator.embedding import decode_item, embed_items
from annotator.encoders.registry import Encoders
from annotator.errors import MediaError
from annotator.media import MediaFetcher, sha256
from annotator.store import repo
from annotator.store.models import Item

CHUNK = 16  # clips fetched, decoded and transcribed at a time


@dataclass
class TranscribeReport:
    transcribed: int = 0
    cached: int = 0
    adopted_as_text: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)


def transcribe_items(session, items: Sequence[Item], *, encoders: Encoders, fetcher: MediaFetcher,
                     as_text: bool = False, progress: bool = False) -> TranscribeReport:
    """Make sure every item with audio has a cached transcript.

    Items are expected to be embedded first (that sets their audio content hash; an item whose
    audio failed there has none and is skipped). With ``as_text``, an item without text takes its
    transcript as its text (``data["text"]``, marked by ``data["transcript_of"]``) and the text is
    encoded. The caller commits.
    """
    report = TranscribeReport()
    transcriber = encoders.transcriber()
    having = [it for it in items if it.data.get("audio") and it.audio_sha]
    known = repo.transcripts(session, shas=[it.audio_sha for it in having], model=transcriber.name)
    todo = list({it.audio_sha: it for it in having if it.audio_sha not in known}.values())
    report.cached = len(having) - len(todo)
    bar = tqdm(total=len(todo), desc="transcribe", unit="clip", file=sys.stderr, disable=not progress or not todo)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        decoded = fetcher.map(partial(decode_item, "audio", fetcher=fetcher), chunk)
        ok = [(it, got[0]) for it, got in zip(chunk, decoded) if not isinstance(got, MediaError)]
        report.failed += [{"id": it.external_id, "modality": "audio", "error": str(got)}
                          for it, got in zip(chunk, decoded) if isinstance(got, MediaError)]
        texts = transcriber.transcribe([clip for _, clip in ok]) if ok else []
        new = {it.audio_sha: text for (it, _), text in zip(ok, texts)}
        repo.add_transcripts(session, model=transcriber.name, texts=new)
        known.update(new)
        report.transcribed += len(new)
        bar.update(len(chunk))
    bar.close()
    if as_text:
        adopted = [it for it in having if known.get(it.audio_sha) and _adopt(it, known[it.audio_sha])]
        report.adopted_as_text = len(adopted)
        if adopted:
            embed_items(adopted, encoders=encoders, fetcher=fetcher, modalities=["text"], progress=False)
    return report


def _adopt(item: Item, text: str) -> bool:
    """Give an item without text its transcript as text; whether it changed."""
    if item.data.get("text") and not item.data.get("transcript_of"):
        return False  # the item's own text wins
    if item.data.get("text") == text:
        return False
    item.data = {**item.data, "text": text, "transcript_of": item.data["audio"]}
    item.text_sha = sha256(text.encode("utf-8"))
    return True


def item_transcripts(session, items: Sequence[Item], *, encoders: Encoders) -> dict[int, str]:
    """Item id → its cached transcript (items without one are left out; nothing is transcribed)."""
    name = encoders.transcriber_name()
    found = repo.transcripts(session, shas=[it.audio_sha for it in items if it.audio_sha], model=name)
    return {it.id: found[it.audio_sha] for it in items if it.audio_sha in found}

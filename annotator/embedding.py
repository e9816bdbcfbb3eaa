"""Encode items once per (content, encoder) and read their vectors back as feature matrices.

Retraining, re-scoring and search all read the cache; nothing is encoded twice.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from annotator.encoders.base import MODALITIES, is_parts_key, parts_key
from annotator.errors import MediaError
from annotator.media import MAX_IMAGE_SIDE, MediaFetcher, load_audio, load_image, sha256
from annotator.encoders.registry import Encoders
from annotator.store.models import Item


DECODED_CHUNK_BYTES = 256 * 2**20  # decoded audio one encoding chunk may hold (two are in memory at once)
AUDIO_BYTES_PER_S = 16000 * 4  # what `load_audio` returns: float32 mono at 16 kHz


def chunk_rows(modality: str, max_audio_s: float, rows: int = 64) -> int:
    """How many items one encoding chunk takes: ``rows``, and for audio as many of the longest clips
    `load_audio` decodes (``max_audio_s``) as fit in `DECODED_CHUNK_BYTES` (6 at the 600 s default:
    64 of them held 2.4 GB). Images are reduced as they are decoded, texts are cut at
    ``max_text_chars``: a count bounds their bytes."""
    if modality != "audio":
        return rows
    return max(1, min(rows, int(DECODED_CHUNK_BYTES // (max_audio_s * AUDIO_BYTES_PER_S))))


class Stages:
    """Seconds spent per stage of a job, summed over calls and threads (thread-safe).

    Stages that run on the media threads (``fetch``, ``decode``, ``prepare``) are thread-seconds and
    overlap the network's forward passes; ``media_wait`` is what the encoding loop spent waiting
    for them, the part of their time a person waits for."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def to_dict(self) -> dict[str, float]:
        return {stage: round(s, 3) for stage, s in self.seconds.items()}


@dataclass
class EmbedReport:
    items: int = 0
    encoded: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    index: dict[str, Any] | None = None
    stages: Stages = field(default_factory=Stages)

    def to_dict(self) -> dict[str, Any]:
        out = {"items": self.items, "encoded": self.encoded, "cached": self.cached,
               "failed": self.failed, "seconds": round(self.seconds, 3), "stages": self.stages.to_dict()}
        if self.index is not None:
            out["index"] = self.index
        return out


def decode_item(modality: str, item: Item, fetcher: MediaFetcher, prepare: Callable[[Any], Any] | None = None,
                stages: Stages | None = None, input_side: int | None = None) -> tuple[Any, str]:
    """(decoded input, content hash) for one item's ``modality``; raises MediaError.

    ``prepare``: the encoder's per-input preprocessing (resize, normalise), run here, on the media
    threads, so that it overlaps the network's forward passes; ``input_side``: the smallest image
    side the encoder reads (`decode_media`)."""
    ref = item.data[modality]
    if modality == "text":  # the encoders read a few hundred tokens: a 50 MB line must not reach the tokenizer
        return ref[:fetcher.settings.max_text_chars], item.text_sha or sha256(ref.encode("utf-8"))
    stages = stages or Stages()
    # the operator's own imports may name any local file; Label Studio tasks only inside the media roots
    with stages.timed("fetch"):
        data = fetcher.fetch(ref, task_id=item.ls_task_id, trusted=item.ls_task_id is None)
        key = sha256(data)
    decoded = decode_media(modality, data, ref, max_audio_s=fetcher.settings.max_audio_s, prepare=prepare,
                           stages=stages, input_side=input_side)
    return decoded, key


def decode_media(modality: str, data: bytes, ref: str, *, max_audio_s: float,
                 prepare: Callable[[Any], Any] | None = None, stages: Stages | None = None,
                 input_side: int | None = None) -> Any:
    """Fetched image or audio bytes → the encoder's input; raises MediaError naming ``ref``.
    ``input_side``: the encoder's ``input_side`` where it has one (a network that reads images at a
    fixed size): JPEGs are decoded at the smallest scale that covers it (`load_image`)."""
    stages = stages or Stages()
    with stages.timed("decode"):
        if modality == "image":
            decoded = load_image(data, ref, min_side=input_side or MAX_IMAGE_SIDE)
        else:
            decoded = load_audio(data, ref, max_seconds=max_audio_s)
    if prepare is not None:
        with stages.timed("prepare"):
            try:
                decoded = prepare(decoded)
            except Exception as exc:  # a decodable file the model cannot take (e.g. an odd image mode)
                raise MediaError(ref, f"cannot prepare for the encoder: {exc}") from exc
    return decoded


def _chunks_ahead(chunks: list[list[Item]], decode: Callable[[Item], tuple[Any, str]],
                  fetcher: MediaFetcher, stages: Stages) -> Iterator[tuple[list[Item], list]]:
    """Each chunk with its fetched and decoded media, the next chunk's being fetched meanwhile.

    The pipeline: while the caller encodes chunk k (the encoder releases the GIL), the media
    threads download, decode and prepare chunk k + 1; one chunk ahead bounds the memory held."""
    if not chunks:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="annotator-prefetch") as ahead:
        pending = ahead.submit(fetcher.map, decode, chunks[0])
        for k, chunk in enumerate(chunks):
            with stages.timed("media_wait"):
                decoded = pending.result()
            if k + 1 < len(chunks):
                pending = ahead.submit(fetcher.map, decode, chunks[k + 1])
            yield chunk, decoded


def _parts_to_fill(encoders: Encoders, modality: str):
    """The part-level features' cache that encoding fills: where they are on (``settings.parts``)
    and the encoder gives them; else None."""
    return encoders.parts_cache(modality) if encoders.settings.parts else None


def missing_content(encoders: Encoders, modality: str, shas: Sequence[str]) -> set[str]:
    """The content hashes with no cached vector yet (or, with part-level features on, no cached
    parts); the caches are re-read first, so what another process (a worker, a cluster's actors)
    added counts."""
    missing = set(encoders.cache(modality).missing(shas))
    parts_cache = _parts_to_fill(encoders, modality)
    return missing | set(parts_cache.missing(shas)) if parts_cache is not None else missing


def uncached_items(items: Sequence[Item], modality: str, encoders: Encoders) -> list[Item]:
    """The items whose ``modality`` content is not cached yet (`missing_content`), or not hashed
    yet (remote media are hashed when fetched)."""
    sha_attr = f"{modality}_sha"
    missing = missing_content(encoders, modality, [getattr(it, sha_attr) for it in items
                                                   if getattr(it, sha_attr) is not None])
    return [it for it in items if getattr(it, sha_attr) is None or getattr(it, sha_attr) in missing]


def encode_into_cache(encoders: Encoders, modality: str, inputs: list, keys: list[str], *,
                      prepared: bool, stages: Stages | None = None) -> np.ndarray:
    """Encode decoded ``inputs`` (already prepared, for an encoder that splits preprocessing off)
    and cache them under ``keys``: the vectors, and the part-level features from the same forward
    pass where they are on. Returns the vectors."""
    stages = stages or Stages()
    encoder = encoders.get(modality)
    parts_cache = _parts_to_fill(encoders, modality)
    with stages.timed("network"):
        if parts_cache is None:
            vectors, parts = (encoder.encode_prepared if prepared else encoder.encode)(inputs), None
        else:
            vectors, parts = (encoder.encode_prepared_parts if prepared else encoder.encode_parts)(inputs)
    with stages.timed("cache_write"):
        if parts is not None:  # parts first: a cached vector then implies its parts
            parts_cache.put(keys, parts.reshape(len(parts), -1))
        encoders.cache(modality).put(keys, vectors)
    return vectors


def embed_items(items: Sequence[Item], *, encoders: Encoders, fetcher: MediaFetcher,
                modalities: Sequence[str] = MODALITIES, chunk_size: int = 64,
                progress: bool = True) -> EmbedReport:
    """Make sure every item's media has a cached vector per modality.

    Items whose content hash is already cached are not fetched at all. A failing item (missing file,
    corrupt image...) is reported in ``failed`` and the rest of its batch goes on. Content hashes
    learned by fetching (remote media) are written onto the items (the caller commits them).
    Fetching and decoding run one chunk ahead of encoding (`_chunks_ahead`). With part-level
    features on (``settings.parts``) and an encoder that gives them, they come from the same
    forward pass into their own cache, and an item cached without them is encoded again.
    """
    started = time.perf_counter()
    report = EmbedReport(items=len(items))
    for modality in modalities:
        having = [it for it in items if it.data.get(modality)]
        if not having:
            continue
        with report.stages.timed("load_encoders"):
            cache, parts_cache = encoders.cache(modality), _parts_to_fill(encoders, modality)
            encoder = encoders.get(modality)
        # encoders that split preprocessing from the forward pass get it done on the media threads
        prepared = hasattr(encoder, "prepare") and hasattr(encoder, "encode_prepared")
        decode = partial(decode_item, modality, fetcher=fetcher, prepare=encoder.prepare if prepared else None,
                         stages=report.stages, input_side=getattr(encoder, "input_side", None))
        sha_attr = f"{modality}_sha"
        with report.stages.timed("cache_read"):
            todo = uncached_items(having, modality, encoders)
        report.cached[modality] = len(having) - len(todo)
        report.encoded[modality] = 0
        bar = tqdm(total=len(todo), desc=f"encode {modality}", unit="item", file=sys.stderr,
                   disable=not progress or not todo)
        rows = chunk_rows(modality, fetcher.settings.max_audio_s, chunk_size)
        chunks = [todo[start:start + rows] for start in range(0, len(todo), rows)]
        for chunk, decoded_chunk in _chunks_ahead(chunks, decode, fetcher, report.stages):
            inputs, keys = [], []
            for it, got in zip(chunk, decoded_chunk):
                if isinstance(got, MediaError):
                    report.failed.append({"id": it.external_id, "modality": modality, "error": str(got)})
                    continue
                decoded, key = got
                setattr(it, sha_attr, key)
                if (key not in cache or (parts_cache is not None and key not in parts_cache)) and key not in keys:
                    inputs.append(decoded)
                    keys.append(key)
            if inputs:
                encode_into_cache(encoders, modality, inputs, keys, prepared=prepared, stages=report.stages)
                report.encoded[modality] += len(inputs)
            bar.update(len(chunk))
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _cached_matrix(cache, shas: list[str | None]) -> np.ndarray:
    """(len(shas), cache.dim) rows of ``cache`` (its dtype), NaN where a hash is None or not cached."""
    missing = set(cache.missing([s for s in shas if s is not None]))  # re-reads what other processes added
    present = [i for i, s in enumerate(shas) if s is not None and s not in missing]
    matrix = np.full((len(shas), cache.dim), np.nan, dtype=cache.dtype)
    if present:
        matrix[present] = cache.get([shas[i] for i in present])
    return matrix


def load_features(items: Sequence[Item], *, encoders: Encoders, modalities: Sequence[str] | None = None,
                  parts: bool = False) -> dict[str, np.ndarray]:
    """Feature matrices from the cache: ``{modality: (n, d) float32}``, NaN rows where an item lacks
    that modality or its vector (e.g. its media failed to decode).

    Only modalities that at least one item has are returned. ``parts`` adds the part-level
    features of the encoders that give them, ``{"text:parts": (n, P * d) float16}`` (NaN rows
    where not cached), for the models that read them (`FusionClassifier.uses_parts`).
    """
    features: dict[str, np.ndarray] = {}
    for modality in modalities or MODALITIES:
        shas = [getattr(it, f"{modality}_sha") if it.data.get(modality) else None for it in items]
        if not any(shas):
            continue
        features[modality] = _cached_matrix(encoders.cache(modality), shas)
        parts_cache = encoders.parts_cache(modality) if parts else None
        if parts_cache is not None:
            features[parts_key(modality)] = _cached_matrix(parts_cache, shas)
    return features


def usable_rows(features: dict[str, np.ndarray], n: int = 0) -> np.ndarray:
    """(n,) bool: items with a vector in at least one modality (``n`` is used when there is none)."""
    pooled = [a for k, a in features.items() if not is_parts_key(k)]
    if not pooled:
        return np.zeros(n, dtype=bool)
    return ~np.all([np.isnan(a).any(axis=1) for a in pooled], axis=0)

"""What runs in a Ray cluster's actors: the encoder and scoring actors (the fetch stage is in
`annotator.cluster.fetch`). Each actor loads its models once; both work on pandas batches and
report failures per row, so one bad item fails alone."""

from __future__ import annotations

import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from annotator.config import Settings
from annotator.embedding import chunk_rows, decode_media, encode_into_cache, missing_content
from annotator.encoders.cache import CachedVectorsOnly
from annotator.encoders.registry import Encoders
from annotator.errors import MediaError
from annotator.runtime import ActiveModel
from annotator.scoring import score_cached
from annotator.versions import load_artifact


def _guarded(work):
    """``work`` that returns a `MediaError` instead of raising it (one bad item fails alone)."""
    def run(x):
        try:
            return work(x)
        except MediaError as exc:
            return exc

    return run


def limit_threads(threads: int) -> None:
    """Give this actor's math libraries ``threads`` threads (0: leave them be), so actors sharing a
    node split its cores instead of each taking all of them: ONNX Runtime and CTranslate2 read
    ``OMP_NUM_THREADS`` when a model loads, torch is told directly."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


class EncodeActor:
    """Decodes and encodes rows of any modality, with one encoder per modality (each loaded once
    per actor, when its first row arrives), and puts the vectors into the shared content-addressed
    cache (a file lock orders concurrent writers). With ``parquet_dir`` each batch's new vectors are
    also written as Parquet shards (one per modality)."""

    def __init__(self, settings: Settings, parquet_dir: str | None = None, threads: int = 0):
        limit_threads(threads)
        self.settings = settings
        self.encoders = Encoders(settings)
        self._decoder = ThreadPoolExecutor(max(2, threads or os.cpu_count() or 1), thread_name_prefix="annotator-decode")
        self.parquet_dir = Path(parquet_dir) if parquet_dir else None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        errors, encoded = list(batch["error"]), [False] * len(batch)
        for modality in dict.fromkeys(batch["modality"]):
            rows = np.flatnonzero((batch["modality"] == modality).to_numpy())
            self._encode(modality, batch.iloc[rows], rows, errors, encoded)
        return pd.DataFrame({"position": batch["position"].to_numpy(), "sha": batch["sha"].to_numpy(),
                             "error": errors, "encoded": encoded})

    def _encode(self, modality: str, part: pd.DataFrame, rows: np.ndarray, errors: list, encoded: list) -> None:
        encoder = self.encoders.get(modality)
        prepared = hasattr(encoder, "prepare") and hasattr(encoder, "encode_prepared")
        missing = missing_content(self.encoders, modality, [sha for sha in part["sha"] if sha])  # others' count
        todo, seen = [], set()
        for i, row in zip(rows, part.itertuples(index=False)):
            if not errors[i] and row.sha in missing and row.sha not in seen:
                todo.append((i, row))
                seen.add(row.sha)
        prepare = encoder.prepare if prepared else None

        def decode(row):
            return row.ref if modality == "text" else decode_media(
                modality, row.data, row.ref, max_audio_s=self.settings.max_audio_s, prepare=prepare,
                input_side=getattr(encoder, "input_side", None))

        # decoded in chunks bounded as the local path's are (`chunk_rows`: a few of the longest clips)
        rows_per_chunk = chunk_rows(modality, self.settings.max_audio_s, max(1, len(todo)))
        for start in range(0, len(todo), rows_per_chunk):
            chunk, inputs, keys = todo[start:start + rows_per_chunk], [], []
            # decoding and preparing on threads (as the local path's media threads do): PIL and numpy
            # release the GIL, so images are ready in a fraction of the time one thread takes
            for (i, row), got in zip(chunk, self._decoder.map(_guarded(decode), [r for _, r in chunk])):
                if isinstance(got, MediaError):
                    errors[i] = str(got)
                    continue
                inputs.append(got)
                keys.append(row.sha)
                encoded[i] = True
            if inputs:
                vectors = encode_into_cache(self.encoders, modality, inputs, keys, prepared=prepared)
                if self.parquet_dir is not None:
                    self._write_shard(modality, keys, vectors)

    def _write_shard(self, modality: str, keys: list[str], vectors: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.parquet_dir / modality
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({"sha": keys, "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(vectors, np.float32).ravel()), vectors.shape[1])})
        pq.write_table(table, folder / f"part-{uuid.uuid4().hex}.parquet")


class ScoreActor:
    """Scores rows of content hashes with one model version (loaded once per actor from its
    artifact folder) over the cached vectors; no encoder network is loaded."""

    def __init__(self, settings: Settings, version: str, artifact_path: str, caches: dict[str, tuple[str, int, int]],
                 threads: int = 0):
        limit_threads(threads)
        classifier, _ = load_artifact(settings, artifact_path)
        self.model = ActiveModel(version, classifier, artifact_path)
        self.encoders = Encoders(settings, overrides={m: CachedVectorsOnly(name, m, dim, n_parts)
                                                      for m, (name, dim, n_parts) in caches.items()})
        self.modalities = list(caches)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        items = [SimpleNamespace(data={m: True for m in self.modalities if getattr(row, f"{m}_sha")},
                                 **{f"{m}_sha": getattr(row, f"{m}_sha") or None for m in self.modalities})
                 for row in batch.itertuples(index=False)]
        scored = score_cached(items, encoders=self.encoders, model=self.model)
        labels = [lab if isinstance(lab, list) else [lab] for lab in scored.labels]
        return pd.DataFrame({"position": batch["position"].to_numpy()[scored.rows], "labels": labels,
                             "score": np.asarray(scored.scores, dtype=np.float64),
                             "probs": list(np.asarray(scored.probs, dtype=np.float64)),
                             "shares": list(np.asarray(scored.shares, dtype=np.float64))})

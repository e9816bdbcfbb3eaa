"""Which engine holds a project's vectors: FAISS files under the data folder (the default), or a
Milvus collection (``ANNOTATOR_VECTOR_STORE``). `ProjectIndex` builds, loads and drops its indexes
through one of these, and both index classes answer the same calls (add, remove, ids, vectors,
search with an id filter, save)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from annotator.config import Settings
from annotator.errors import ConfigError
from annotator.index.vector_index import VectorIndex


class FaissEngine:
    """In-process FAISS / BLAS indexes, saved as files at their path."""

    name = "faiss"

    def build(self, path: Path, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        return VectorIndex.build(ids, vectors) if len(ids) else VectorIndex(vectors.shape[1])

    def load(self, path: Path) -> VectorIndex:
        _refuse_other_engine(path, self.name)
        return VectorIndex.load(path)

    def drop(self, path: Path) -> None:
        """Nothing beyond the folder, which the caller removes."""


class MilvusEngine:
    """One Milvus collection per project index, named after the index's place under the data
    folder (``projects/<name>/index/<space>-<modality>``), so every host and worker of a deployment
    that shares the database finds the same collections."""

    name = "milvus"

    def __init__(self, settings: Settings):
        from annotator.index.milvus_index import connect, milvus_uri

        self.settings = settings
        self.uri = milvus_uri(settings.vector_store)
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        try:
            self.client = connect(self.uri, token)
        except ImportError as exc:
            raise ConfigError("the Milvus vector store needs pymilvus (pip install 'multimodal-annotator[scale]')") from exc

    def _collection(self, path: Path) -> str:
        from annotator.index.milvus_index import collection_name

        path = Path(path)
        try:
            label = str(path.resolve().relative_to(self.settings.data_dir.resolve()))
        except ValueError:
            label = str(path.resolve())
        return collection_name(label)

    def build(self, path: Path, ids: np.ndarray, vectors: np.ndarray):
        from annotator.index.milvus_index import MilvusIndex

        return MilvusIndex.build(self.client, self._collection(path), ids, vectors, uri=self.uri,
                                 index_type=self.settings.milvus_index)

    def load(self, path: Path):
        from annotator.index.milvus_index import MilvusIndex

        _refuse_other_engine(path, self.name)
        return MilvusIndex.load(path, self.client, uri=self.uri)

    def drop(self, path: Path) -> None:
        from annotator.index.milvus_index import drop_collection

        drop_collection(self.client, self._collection(path))


def stored_engine(path: Path) -> str | None:
    """The engine the index saved at ``path`` lives in (None: no index there)."""
    meta = Path(path) / "current" / "meta.json"
    return json.loads(meta.read_text()).get("engine", "faiss") if meta.exists() else None


def _refuse_other_engine(path: Path, engine: str) -> None:
    stored = stored_engine(path)
    if stored not in (None, engine):
        raise ConfigError(f"the index at {path} lives in {stored}, but the vector store is {engine}; set "
                          "ANNOTATOR_VECTOR_STORE back, or run `annotator embed` to rebuild it there")


def index_engine(settings: Settings) -> FaissEngine | MilvusEngine:
    """The engine ``settings.vector_store`` names."""
    store = settings.vector_store.strip()
    if store in ("", "faiss"):
        return FaissEngine()
    return MilvusEngine(settings)

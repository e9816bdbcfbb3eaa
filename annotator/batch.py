"""Where the batch jobs (``embed``, ``predict``, ``select``) run: in this process (`LocalEngine`,
the default), or as Ray Data pipelines on a Ray cluster (`annotator.cluster.RayEngine`,
``--engine ray``). Both encode into the same content-addressed embedding cache and score with
`annotator.scoring.score_cached`, so they give the same vectors and the same answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from annotator.config import Settings
from annotator.embedding import EmbedReport, embed_items
from annotator.encoders.base import MODALITIES
from annotator.encoders.registry import Encoders
from annotator.errors import UnknownNameError
from annotator.media import MediaFetcher
from annotator.runtime import ActiveModel
from annotator.scoring import Scored, score_cached
from annotator.store.models import Item

ENGINES = ("local", "ray")


class BatchEngine(Protocol):
    name: str
    in_process: bool  # scores in this process's memory (so a caller holding the vectors scores them itself)

    def embed(self, items: Sequence[Item], *, encoders: Encoders, modalities: Sequence[str] = MODALITIES,
              progress: bool = True) -> EmbedReport:
        """Cache a vector for every item's media (`annotator.embedding.embed_items`'s contract:
        failures per item, content hashes learned by fetching written onto the items)."""
        ...

    def score(self, items: Sequence[Item], *, encoders: Encoders, model: ActiveModel, progress: bool = True) -> Scored:
        """The model's answers from cached vectors (`annotator.scoring.score_cached`'s contract)."""
        ...

    def close(self) -> None: ...


class LocalEngine:
    """This process: media on threads, one encoder, scoring in memory."""

    name = "local"
    in_process = True

    def __init__(self, settings: Settings):
        self.settings = settings

    def embed(self, items: Sequence[Item], *, encoders: Encoders, modalities: Sequence[str] = MODALITIES,
              progress: bool = True) -> EmbedReport:
        with MediaFetcher(self.settings) as fetcher:
            return embed_items(items, encoders=encoders, fetcher=fetcher, modalities=modalities, progress=progress)

    def score(self, items: Sequence[Item], *, encoders: Encoders, model: ActiveModel, progress: bool = True) -> Scored:
        return score_cached(items, encoders=encoders, model=model)

    def close(self) -> None:
        """Nothing held."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_engine(settings: Settings, engine: str = "local", *, address: str | None = None, actors: int | None = None,
                 parquet_dir: Path | None = None) -> BatchEngine:
    """The engine named ``engine``. For ``ray``: ``address`` joins a running cluster (else
    ``RAY_ADDRESS``, else a local cluster is started), ``actors`` sizes the encoder pool (default:
    one per GPU, else one per two CPUs), ``parquet_dir`` also writes the vectors as Parquet shards."""
    if engine == "local":
        return LocalEngine(settings)
    if engine == "ray":
        from annotator.cluster.ray_engine import RayEngine

        return RayEngine(settings, address=address, actors=actors, parquet_dir=parquet_dir)
    raise UnknownNameError("engine", engine, ENGINES)

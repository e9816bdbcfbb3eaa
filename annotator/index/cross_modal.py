"""Per-project cross-modal search over the store's items.

Two spaces per modality:

- ``native``: the encoder's own vectors; used for same-modality search (image→similar image).
- ``shared``: every modality projected into one space (a CLIP model's own space when text and image
  come from one CLIP checkpoint, else a `CrossModalAligner` learned on the project's paired items);
  used across modalities (text→image, audio→text...). Scores in it are comparable across
  modalities, so results from several modalities merge by score.

Index keys are item primary keys. `ProjectIndex.update` (run by ``annotator embed``) adds new
items, removes deleted ones, rebuilds an index whose layout no longer fits its size, and refits the
aligner when the number of paired items has grown by half since the last fit.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotator.artifacts import SharedArtifacts, current_generation
from annotator.config import Settings
from annotator.embedding import decode_media, load_features
from annotator.encoders.base import MODALITIES
from annotator.errors import AnnotatorError, NotEnoughLabelsError, NotFoundError, UnknownNameError
from annotator.fusion.align import CrossModalAligner
from annotator.index.choose import plan_index
from annotator.index.engines import index_engine, stored_engine
from annotator.index.vector_index import VectorIndex
from annotator.media import MediaFetcher
from annotator.encoders.registry import Encoders
from annotator.store import Store, repo
from annotator.store.models import Item

REFIT_GROWTH = 1.5
log = logging.getLogger("annotator.index")


@dataclass
class Hit:
    id: str
    score: float
    modality: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(float(self.score), 6), "modality": self.modality}


@dataclass
class IndexReport:
    indexes: dict[str, int] = field(default_factory=dict)
    aligned: bool = False
    aligner_refit: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"indexes": self.indexes, "aligned": self.aligned, "aligner_refit": self.aligner_refit,
                "note": self.note}


class ProjectIndex:
    """The indexes of one project, on disk under ``<data dir>/projects/<name>/index``."""

    def __init__(self, settings: Settings, project_name: str, encoders: Encoders | None = None):
        self.settings, self.project_name = settings, project_name
        self.encoders = encoders or Encoders(settings)
        self.root = settings.project_dir(project_name) / "index"
        self.engine = index_engine(settings)
        self._indexes: dict[tuple[str, str], VectorIndex] = {}  # or MilvusIndex: the same calls
        self._generations: dict[Any, str | None] = {}  # what was loaded, by its link's target
        self._shared = SharedArtifacts.for_settings(settings)
        self._checked: dict[Path, float] = {}  # when the shared artifacts were last asked about a path
        self._aligner: CrossModalAligner | None = None

    # --- spaces --------------------------------------------------------------------------------

    def _path(self, space: str, modality: str) -> Path:
        return self.root / f"{space}-{modality}"

    def _native_shared(self) -> set[str]:
        """Modalities whose native space already is the shared one (one CLIP checkpoint)."""
        return {"text", "image"} if self.encoders.share_space("text", "image") else set()

    def _stale(self, key, path: Path) -> bool:
        """Whether ``path`` (an `atomic_directory` link) now names another generation than the one
        loaded under ``key``: another process (``annotator embed``, a worker) rewrote it, here or, with
        shared artifacts, on another host (asked at most every ``artifacts_poll_s`` seconds)."""
        if self._shared is not None and time.monotonic() - self._checked.get(path, -1e9) >= self.settings.artifacts_poll_s:
            self._checked[path] = time.monotonic()
            try:
                self._shared.refresh(path)
            except OSError as exc:  # the shared store is unreachable: search what this host has
                log.warning("could not check %s for a newer generation of %s: %s", self._shared.url, path, exc)
        generation = current_generation(path)
        if key in self._generations and self._generations[key] == generation:
            return False
        self._generations[key] = generation
        return True

    @property
    def aligner(self) -> CrossModalAligner | None:
        path = self.root / "aligner"
        if self._stale("aligner", path):
            self._aligner = CrossModalAligner.load(path) if (path / "config.json").exists() else None
        return self._aligner

    def to_shared(self, modality: str, vectors: np.ndarray) -> np.ndarray | None:
        """Native vectors → shared space, or None when ``modality`` is not in the shared space."""
        if modality in self._native_shared():
            return vectors
        if self.aligner is not None and modality in self.aligner.modalities_:
            return self.aligner.transform(modality, vectors)
        return None

    def index(self, space: str, modality: str) -> VectorIndex | None:
        key = (space, modality)
        path = self._path(space, modality)
        if self._stale(key, path / "current"):
            self._indexes.pop(key, None)
            if (path / "current").exists():
                self._indexes[key] = self.engine.load(path)
        return self._indexes.get(key)

    # --- keeping the indexes in step with the store ----------------------------------------

    def update(self, store: Store, *, items: list[Item] | None = None) -> IndexReport:
        """Bring every index in line with the store's items and the embedding cache."""
        report = IndexReport()
        if items is None:
            with store.session() as s:
                items = repo.list_items(s, project=repo.get_project(s, name=self.project_name))
        features = load_features(items, encoders=self.encoders)
        pks = np.array([it.id for it in items], dtype=np.int64)
        report.aligner_refit = self._maybe_refit_aligner(features, report)
        report.aligned = self.aligner is not None or bool(self._native_shared())
        for modality, matrix in features.items():
            present = ~np.isnan(matrix).any(axis=1)
            ids, vectors = pks[present], matrix[present]
            self._sync("native", modality, ids, vectors, rebuild=False)
            shared = self.to_shared(modality, vectors) if len(vectors) else None
            if shared is not None:
                self._sync("shared", modality, ids, shared, rebuild=report.aligner_refit)
            elif self._path("shared", modality).exists():
                if self._shared is not None:
                    self._shared.remove(self._path("shared", modality) / "current")
                self.engine.drop(self._path("shared", modality))
                shutil.rmtree(self._path("shared", modality))
                self._indexes.pop(("shared", modality), None)
                self._generations.pop(("shared", modality), None)
        report.indexes = {f"{space}-{m}": idx.ntotal for (space, m), idx in sorted(self._indexes.items())}
        return report

    def _maybe_refit_aligner(self, features: dict[str, np.ndarray], report: IndexReport) -> bool:
        if len(features) < 2 or self._native_shared() == set(features):
            return False
        present = {m: ~np.isnan(a).any(axis=1) for m, a in features.items()}
        n_pairs = int(sum((present[a] & present[b]).sum() for i, a in enumerate(present) for b in list(present)[i + 1:]))
        meta_path = self.root / "aligner-fit.json"  # beside the aligner: its folder is written once
        fitted_on = json.loads(meta_path.read_text())["n_pairs"] if meta_path.exists() else 0
        if self.aligner is not None and n_pairs < fitted_on * REFIT_GROWTH:
            return False
        try:
            aligner = CrossModalAligner(adversarial=self.settings.align_adversarial, random_state=0).fit(features)
        except NotEnoughLabelsError as exc:
            report.note = f"no shared space yet: {exc}"
            return False
        aligner.save(self.root / "aligner")
        meta_path.write_text(json.dumps({"n_pairs": n_pairs}))
        if self._shared is not None:
            self._shared.publish(self.root / "aligner")
        self._aligner = aligner
        self._generations["aligner"] = current_generation(self.root / "aligner")
        return True

    def _sync(self, space: str, modality: str, ids: np.ndarray, vectors: np.ndarray, *, rebuild: bool) -> None:
        path = self._path(space, modality)
        other_engine = stored_engine(path) not in (None, self.engine.name)  # the vector store was switched
        index = None if rebuild or other_engine else self.index(space, modality)
        if index is not None and (index.dim != vectors.shape[1] or index.needs_retrain
                                  or plan_index(len(ids), vectors.shape[1]).kind != index.plan.kind):
            index = None  # layout or encoder changed: rebuild from the cache
        if index is None:
            index = self.engine.build(path, ids, vectors)
        else:
            wanted, present = set(ids.tolist()), set(index.ids().tolist())
            gone = sorted(present - wanted)
            index.remove(gone)
            new = np.array([i not in present for i in ids.tolist()], dtype=bool)
            if new.any():
                index.add(ids[new], vectors[new])
            if not gone and not new.any():
                return  # unchanged: no new generation, which every other worker would reload
        index.save(self._path(space, modality))
        if self._shared is not None:
            self._shared.publish(self._path(space, modality) / "current")
        self._indexes[(space, modality)] = index
        self._generations[(space, modality)] = current_generation(self._path(space, modality) / "current")

    # --- queries ---------------------------------------------------------------------------------

    def encode_query(self, *, text: str | None = None, image: str | None = None, audio: str | None = None,
                     trusted: bool = False) -> tuple[str, np.ndarray]:
        """(modality, native query vector) for a free query; unreadable media raise `MediaError`.
        ``trusted``: the operator's own query (the CLI), which may name any local file."""
        given = [(m, v) for m, v in (("text", text), ("image", image), ("audio", audio)) if v]
        if len(given) != 1:
            raise AnnotatorError("give exactly one query: text, image, audio or an item id")
        modality, ref = given[0]
        if modality == "text":
            return modality, self.encoders.get("text").encode([ref[:self.settings.max_text_chars]])[0]
        with MediaFetcher(self.settings) as fetcher:
            data = fetcher.fetch(ref, trusted=trusted)
        encoder = self.encoders.get(modality)
        decoded = decode_media(modality, data, ref, max_audio_s=self.settings.max_audio_s,
                               input_side=getattr(encoder, "input_side", None))  # as `embed` decodes
        return modality, encoder.encode([decoded])[0]

    def search(self, store: Store, *, text: str | None = None, image: str | None = None,
               audio: str | None = None, item: str | None = None, k: int = 10, modality: str | None = None,
               label: str | None = None, has_label: bool | None = None, trusted: bool = False) -> list[Hit]:
        """Top-``k`` items for a query.

        Parameters
        ----------
        text, image, audio, item : str
            Exactly one: free text, an image/audio path or URL, or an item id (item→similar).
        modality : str, optional
            Search only this modality's vectors. Equal to the query's modality, the native space is
            used (best for same-modality similarity); otherwise, and by default, the shared space.
        label, has_label : optional
            Keep only items whose current human label includes ``label`` / that are (not) labelled.
        trusted : bool, default=False
            The query is the operator's (the CLI): an image or audio path may be any local file.
            /search leaves it False, so its paths are read only inside the media roots.
        """
        if modality is not None and modality not in MODALITIES:
            raise UnknownNameError("modality", modality, MODALITIES)
        with store.session() as s:
            project = repo.get_project(s, name=self.project_name)
            if item is not None:
                [query_item] = repo.list_items(s, project=project, external_ids=[item])
                queries = {m: v for m, v in self._item_vectors(query_item).items()}
                if not queries:
                    raise NotFoundError(f"item {item!r} has no embedding yet; run `annotator embed --project {self.project_name}`")
                exclude = {query_item.id}
            else:
                q_mod, vec = self.encode_query(text=text, image=image, audio=audio, trusted=trusted)
                queries, exclude = {q_mod: vec}, set()
            allowed = self._allowed(s, project, label=label, has_label=has_label)
            hits = self._search_vectors(queries, k + len(exclude), modality, allowed)
            names = repo.external_ids(s, project=project)
        best: dict[int, tuple[float, str]] = {}
        for pk, score, mod in hits:
            if pk in exclude or pk not in names:  # deleted from the store: gone from results at once
                continue
            if pk not in best or score > best[pk][0]:
                best[pk] = (score, mod)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [Hit(names[pk], score, mod) for pk, (score, mod) in ranked]

    def _item_vectors(self, item: Item) -> dict[str, np.ndarray]:
        features = load_features([item], encoders=self.encoders)
        return {m: a[0] for m, a in features.items() if not np.isnan(a[0]).any()}

    def _allowed(self, session, project, *, label, has_label) -> list[int] | None:
        if label is None and has_label is None:
            return None
        labels = repo.current_labels(session, project=project)
        if label is not None:
            return [pk for pk, values in labels.items() if label in values]
        if has_label:
            return list(labels)
        return [pk for pk in repo.external_ids(session, project=project) if pk not in labels]

    def _search_vectors(self, queries: dict[str, np.ndarray], k: int, modality: str | None,
                        allowed: list[int] | None) -> list[tuple[int, float, str]]:
        hits: list[tuple[int, float, str]] = []
        for q_mod, vec in queries.items():
            if modality is not None and modality == q_mod:
                targets = [("native", q_mod, vec)]
            else:
                shared_q = self.to_shared(q_mod, vec[None])
                wanted = [modality] if modality else list(MODALITIES)
                if shared_q is None:
                    if modality is not None:
                        raise NotFoundError(
                            f"no shared space for {q_mod} yet, so it cannot search {modality}: the project needs "
                            f"items carrying both modalities (then `annotator embed`), or a CLIP model")
                    targets = [("native", q_mod, vec)]  # fall back to same-modality search
                else:
                    targets = [("shared", m, shared_q[0]) for m in wanted]
            for space, target, qv in targets:
                index = self.index(space, target)
                if index is None or index.ntotal == 0:
                    continue
                scores, ids = index.search(qv[None].astype(np.float32), k, allowed_ids=allowed)
                hits += [(int(i), float(sc), target) for i, sc in zip(ids[0], scores[0]) if i >= 0]
        if not hits and not any(self.index(sp, m) for sp in ("native", "shared") for m in MODALITIES):
            raise NotFoundError(f"project {self.project_name!r} has no index yet; run `annotator embed --project {self.project_name}`")
        return hits

    def duplicates(self, store: Store, *, threshold: float = 0.95, modality: str | None = None,
                   k: int = 10) -> list[dict[str, Any]]:
        """Groups of near-duplicate items (cosine ≥ ``threshold`` in a modality's native space).

        Pairs come from each item's ``k`` nearest neighbours; groups are their connected components.
        """
        with store.session() as s:
            project = repo.get_project(s, name=self.project_name)
            names = repo.external_ids(s, project=project)
        groups: list[dict[str, Any]] = []
        for m in ([modality] if modality else list(MODALITIES)):
            index = self.index("native", m)
            if index is None or index.ntotal < 2:
                continue
            ids = index.ids()
            parent = {int(i): int(i) for i in ids}

            def find(x: int) -> int:
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            min_score: dict[int, float] = {}
            for start in range(0, len(ids), 4096):
                chunk = ids[start:start + 4096]
                vectors = index.vectors(chunk)
                scores, neighbours = index.search(vectors, min(k + 1, index.ntotal))
                for a, row_s, row_n in zip(chunk, scores, neighbours):
                    for sc, b in zip(row_s, row_n):
                        if b >= 0 and b != a and sc >= threshold:
                            ra, rb = find(int(a)), find(int(b))
                            if ra != rb:
                                parent[ra] = rb
                            min_score[int(a)] = min(min_score.get(int(a), 1.0), float(sc))
            members: dict[int, list[int]] = {}
            for i in parent:
                members.setdefault(find(i), []).append(i)
            for group in members.values():
                live = sorted(names[i] for i in group if i in names)
                if len(live) > 1:
                    groups.append({"modality": m, "items": live,
                                   "min_score": round(min(min_score.get(i, 1.0) for i in group), 6)})
        return sorted(groups, key=lambda g: (-len(g["items"]), g["items"]))

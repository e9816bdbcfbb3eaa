"""`MilvusIndex`: the `VectorIndex` contract over one Milvus collection, for projects whose vectors
outgrow one machine's memory (a Milvus standalone or cluster deployment), or Milvus Lite (an
embedded Milvus in one file, one process at a time).

Milvus keeps the vectors and their index itself, so ``save`` only records which collection a
project's index lives in: a marker generation under the index folder, so other processes notice a
rebuild as they do for FAISS files (Milvus Lite flushes first); ``load`` reconnects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from annotator.artifacts import atomic_directory
from annotator.errors import ConfigError, DimensionMismatchError, NotFoundError
from annotator.index.choose import IndexPlan, plan_index

MAX_TOPK = 16384  # Milvus's limit on results per query
_BATCH = 4096  # rows per insert/get/delete request: well under Milvus's 64 MB message limit at 4096-d
# true of every row; written with small constants because a Milvus server's parser reads "-2**63" as
# "-(2**63)", out of the int64 range (Milvus Lite accepts it)
_EVERY_ID = "id < 0 or id >= 0"
# Consistency of reads. "Strong" waits for Milvus's next time tick (0.2 s) on every read, a search
# included; "Session" does not, and sees this client's inserts, but a Milvus 2.3 server returns no
# timestamp for a delete. So the first read after this process wrote to a collection is "Strong",
# the others "Session": a process reads its own writes, and other processes' within a tick.
_unread_writes: set[tuple[str, str]] = set()
_clients: dict[tuple[str, str], object] = {}
_clients_lock = threading.Lock()


def milvus_uri(vector_store: str) -> str:
    """``milvus://host:port`` → ``http://host:port``; ``milvus+https://`` → ``https://``;
    ``milvus-lite:///path.db`` (or a path ending in ``.db``) → that file (Milvus Lite)."""
    if vector_store.startswith("milvus-lite://"):
        return str(Path(vector_store.removeprefix("milvus-lite://")).expanduser())
    if vector_store.endswith(".db") and "://" not in vector_store:
        return str(Path(vector_store).expanduser())
    parts = urlsplit(vector_store)
    scheme = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"ANNOTATOR_VECTOR_STORE={vector_store!r}: use faiss, milvus://host:19530, "
                          "milvus+https://host:443 or milvus-lite:///path/vectors.db")
    return f"{scheme}://{parts.netloc}{parts.path}"


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://"))


def connect(uri: str, token: str = ""):
    """One `MilvusClient` per (uri, token) and process: Milvus Lite allows one server per file."""
    import grpc
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    with _clients_lock:
        key = (uri, token)
        if key not in _clients:
            if is_lite(uri):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                # Milvus Lite's in-process gRPC server logs a traceback for each call it does not
                # implement (pymilvus asks for a server timestamp, then falls back on its own)
                logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            try:
                client = MilvusClient(uri=uri, token=token)
                if not is_lite(uri):  # a server can accept the connection and refuse the first call
                    client.list_collections()
                _clients[key] = client
            # pymilvus says "illegal connection params or server unavailable", or lets gRPC's
            # UNAUTHENTICATED through (a server's former default password passes the connection)
            except (MilvusException, grpc.RpcError) as exc:
                if is_lite(uri):
                    raise
                details = getattr(exc, "details", None)
                reason = details() if callable(details) else getattr(exc, "message", exc)
                raise ConfigError(f"cannot connect to Milvus at {uri}: {reason}; check "
                                  "ANNOTATOR_VECTOR_STORE (is the server up?) and ANNOTATOR_MILVUS_TOKEN "
                                  "(user:password or an API key, where the server has authentication on)") from exc
        return _clients[key]


def disconnect(uri: str) -> None:
    """Close this process's clients of ``uri``; for Milvus Lite also stop its server, so another
    process can open the file."""
    with _clients_lock:
        for key in [k for k in _clients if k[0] == uri]:
            _clients.pop(key).close()
    if is_lite(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def drop_collection(client, collection: str) -> None:
    """Drop ``collection`` where it exists."""
    if client.has_collection(collection):
        client.drop_collection(collection)


def collection_name(label: str) -> str:
    """A valid Milvus collection name (letters, digits, underscores; ≤ 255) for ``label``."""
    readable = re.sub(r"[^A-Za-z0-9_]+", "_", label).strip("_")[-80:]
    return f"annotator_{readable}_{hashlib.sha1(label.encode()).hexdigest()[:10]}"


def milvus_index_params(plan: IndexPlan, *, lite: bool, forced: str = "auto") -> tuple[str, dict, dict]:
    """(index type, build params, search params) for a plan: FLAT while exact search is cheap,
    then HNSW on a server (IVF_FLAT on Milvus Lite, which has no graph indexes), unless forced."""
    kind = forced.upper() if forced != "auto" else ("FLAT" if plan.kind == "flat" else "IVF_FLAT" if lite else "HNSW")
    nlist = max(plan.nlist, 16)
    build = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": nlist}, "IVF_SQ8": {"nlist": nlist},
             "IVF_PQ": {"nlist": nlist, "m": 16, "nbits": 8}, "GPU_IVF_FLAT": {"nlist": nlist},
             "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32}}.get(kind, {})
    search = {"HNSW": {"ef": 128}, "GPU_CAGRA": {"itopk_size": 128}}.get(
        kind, {"nprobe": max(plan.nprobe, 16)} if "IVF" in kind else {})
    return kind, build, search


class MilvusIndex:
    """Inner-product search over vectors keyed by int64 ids, in one Milvus collection.

    Same methods and meaning as `VectorIndex` (add replaces an id, remove ignores unknown ids,
    search returns -1/-inf in empty slots, ``allowed_ids`` filters). What this process added is
    found by its next search; another process's writes show within Milvus's time tick (0.2 s).
    """

    def __init__(self, client, collection: str, dim: int, plan: IndexPlan | None = None, *, uri: str = "",
                 index_type: str = "auto"):
        self.client, self.collection, self.dim, self.uri = client, collection, int(dim), uri
        self.plan = plan or IndexPlan("flat")
        self.index_type, _, self.search_params = milvus_index_params(self.plan, lite=is_lite(uri), forced=index_type)
        self._forced = index_type

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def create(cls, client, collection: str, dim: int, *, n_expected: int = 0, uri: str = "",
               index_type: str = "auto") -> MilvusIndex:
        """A new, empty collection (an existing one of that name is dropped) laid out for
        ``n_expected`` vectors."""
        from pymilvus import DataType, MilvusClient

        plan = plan_index(n_expected, dim)
        index = cls(client, collection, dim, plan, uri=uri, index_type=index_type)
        drop_collection(client, collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=index.dim)
        kind, build, _ = milvus_index_params(plan, lite=is_lite(uri), forced=index_type)
        params = client.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        client.create_collection(collection, schema=schema, index_params=params, consistency_level="Session")
        return index

    @classmethod
    def build(cls, client, collection: str, ids: Sequence[int], vectors: np.ndarray, *, uri: str = "",
              index_type: str = "auto") -> MilvusIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = cls.create(client, collection, vectors.shape[1], n_expected=len(vectors), uri=uri,
                           index_type=index_type)
        index.add(ids, vectors)
        return index

    needs_retrain = False  # Milvus maintains its own index as rows come and go

    def _level(self) -> str:
        """The consistency of the next read (see ``_unread_writes``)."""
        with _clients_lock:
            if (self.uri, self.collection) in _unread_writes:
                _unread_writes.discard((self.uri, self.collection))
                return "Strong"
        return "Session"

    def _wrote(self) -> None:
        with _clients_lock:
            _unread_writes.add((self.uri, self.collection))

    # --- contents ----------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level=self._level())
        return int(rows[0]["count(*)"]) if rows else 0

    def ids(self) -> np.ndarray:
        level = self._level()
        rows = self.client.query(self.collection, filter=_EVERY_ID, output_fields=["id"], limit=MAX_TOPK,
                                 consistency_level=level)
        if len(rows) < MAX_TOPK:  # one query answers most projects; an iterator costs a second on a server
            return np.sort(np.asarray([int(r["id"]) for r in rows], dtype=np.int64))
        found: list[int] = []
        iterator = self.client.query_iterator(self.collection, batch_size=MAX_TOPK, filter=_EVERY_ID,
                                              output_fields=["id"], consistency_level=level)
        try:
            while batch := iterator.next():
                found += [int(r["id"]) for r in batch]
        finally:
            iterator.close()
        return np.sort(np.asarray(found, dtype=np.int64))

    def __contains__(self, item_id: int) -> bool:
        return bool(self.client.get(self.collection, ids=[int(item_id)], output_fields=["id"],
                                    consistency_level=self._level()))

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Add vectors; an id already present is replaced."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError("vector index", self.dim, vectors.shape[-1] if vectors.ndim else -1)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids passed to add() must be unique")
        for start in range(0, len(ids), _BATCH):
            rows = [{"id": int(i), "vector": v} for i, v in zip(ids[start:start + _BATCH],
                                                                 vectors[start:start + _BATCH].tolist())]
            self.client.upsert(self.collection, rows)
        self._wrote()

    def remove(self, ids: Sequence[int]) -> int:
        """Delete ids (unknown ones are ignored); returns how many were there."""
        ids = list(dict.fromkeys(int(i) for i in ids))
        removed = 0
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            removed += len(self.client.get(self.collection, ids=chunk, output_fields=["id"],
                                           consistency_level=self._level()))
            self.client.delete(self.collection, ids=chunk)
            self._wrote()
        return removed

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(n, dim) vectors of ``ids`` in that order; raises `NotFoundError` for an id not present."""
        ids = [int(i) for i in ids]
        found: dict[int, list[float]] = {}
        for start in range(0, len(ids), _BATCH):
            for row in self.client.get(self.collection, ids=ids[start:start + _BATCH], output_fields=["vector"],
                                       consistency_level=self._level()):
                found[int(row["id"])] = row["vector"]
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"id {missing[0]} is not in the index")
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def vector(self, item_id: int) -> np.ndarray:
        return self.vectors([item_id])[0]

    # --- search ------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, allowed_ids: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query, best first; missing slots have id -1 and score -inf."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise DimensionMismatchError("vector index", self.dim, queries.shape[1])
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        if k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
            return out_s, out_i
        limit = min(k, MAX_TOPK)
        kwargs = {}
        if allowed_ids is not None:  # ints only, so the expression cannot be anything but a list of ids
            kwargs = {"filter": f"id in [{','.join(str(int(i)) for i in allowed_ids)}]"}
        params = {"metric_type": "IP", "params": {**self.search_params, **(
            {"ef": max(self.search_params["ef"], limit)} if "ef" in self.search_params else {})}}
        for start in range(0, len(queries), 256):
            block = queries[start:start + 256]
            results = self.client.search(self.collection, data=block.tolist(), limit=limit, search_params=params,
                                         output_fields=[], consistency_level=self._level(), **kwargs)
            for q, hits in enumerate(results, start=start):
                for j, hit in enumerate(hits[:limit]):
                    out_s[q, j], out_i[q, j] = hit["distance"], hit["id"]
        return out_s, out_i

    # --- persistence -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Record this collection as a new generation of ``path/current`` (Milvus Lite: after a flush,
        so the next process to open the file finds the rows; a server keeps acknowledged rows in its
        log already, and a flush there costs seconds and leaves small segments)."""
        if is_lite(self.uri):
            self.client.flush(self.collection)
        with atomic_directory(Path(path) / "current") as gen:
            meta = {"engine": "milvus", "collection": self.collection, "dim": self.dim, "plan": self.plan.__dict__,
                    "index_type": self._forced}
            (gen / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, client, *, uri: str = "") -> MilvusIndex:
        current = Path(path) / "current"
        if not current.exists():
            raise NotFoundError(f"no index at {path}")
        meta = json.loads((current / "meta.json").read_text())
        if not client.has_collection(meta["collection"]):
            raise NotFoundError(f"Milvus has no collection {meta['collection']} (the index at {path}); "
                                "run `annotator embed` to rebuild it")
        from pymilvus.client.types import LoadState

        if client.get_load_state(meta["collection"]).get("state") != LoadState.Loaded:  # a load waits ~1 s
            client.load_collection(meta["collection"])
        return cls(client, meta["collection"], meta["dim"], IndexPlan(**meta["plan"]), uri=uri,
                   index_type=meta.get("index_type", "auto"))

"""Embedding cache: one vector per (content hash, encoder name), on disk, shared by every project.

Layout per encoder: ``<root>/<slug>/vectors.f32`` (rows appended, read through a memory map),
``keys.txt`` (one content hash per row, same order) and ``meta.json`` (name, dim, dtype).
Part-level features (``<encoder name>:parts``, a row per item of n_parts x dim) are float16. Appends take a
file lock, write vectors before keys, and readers trust only rows that both files cover, so a crash
mid-append loses at most that append, never earlier rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from annotator.errors import DimensionMismatchError


def _slug(name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-60:]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


class EmbeddingCache:
    """Vectors of one encoder keyed by content hash.

    Parameters
    ----------
    root : Path
        The cache folder (``settings.cache_dir``).
    encoder_name : str
        `Encoder.name`; two encoders with different names never share vectors.
    dim : int
        Vector width; a cache written with another width is refused.
    dtype : {"float32", "float16"}
        How rows are stored (`get` returns them in it); float16 halves the part-level features.
    """

    def __init__(self, root: Path, encoder_name: str, dim: int, dtype: str = "float32"):
        self.dir = Path(root) / _slug(encoder_name)
        self.encoder_name, self.dim, self.dtype = encoder_name, int(dim), np.dtype(dtype)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored["dim"] != self.dim:
                raise DimensionMismatchError(f"embedding cache {self.dir}", stored["dim"], self.dim)
            if stored.get("dtype", "float32") != self.dtype.name:
                raise ValueError(f"embedding cache {self.dir} holds {stored.get('dtype', 'float32')}, not {self.dtype}")
        else:
            meta.write_text(json.dumps({"encoder": encoder_name, "dim": self.dim, "dtype": self.dtype.name}))
        self._vectors_path, self._keys_path = self.dir / "vectors.f32", self.dir / "keys.txt"
        self._rows: dict[str, int] = {}
        self._n_loaded = 0
        self._keys_offset = 0
        self._mmap: np.ndarray | None = None
        self._refresh()

    def _refresh(self) -> None:
        """Pick up rows appended since the last read (by this or another process), incrementally."""
        if not self._keys_path.exists() or not self._vectors_path.exists():
            return
        n_vectors = self._vectors_path.stat().st_size // self._row_bytes
        if n_vectors == self._n_loaded:
            return
        with self._keys_path.open("rb") as fh:
            fh.seek(self._keys_offset)
            tail = fh.read()
        lines = tail.split(b"\n")[:-1]  # only complete lines
        for line in lines[: n_vectors - self._n_loaded]:
            self._rows.setdefault(line.decode(), self._n_loaded)
            self._n_loaded += 1
            self._keys_offset += len(line) + 1
        self._mmap = np.memmap(self._vectors_path, dtype=self.dtype, mode="r", shape=(self._n_loaded, self.dim))

    @property
    def _row_bytes(self) -> int:
        return self.dtype.itemsize * self.dim

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys (deduplicated, in order) that have no vector yet."""
        self._refresh()
        return [k for k in dict.fromkeys(keys) if k not in self._rows]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """(n, dim) rows (in ``dtype``) for ``keys``; raises KeyError naming the first key not cached."""
        self._refresh()
        try:
            rows = np.fromiter((self._rows[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as exc:
            raise KeyError(f"no cached {self.encoder_name} embedding for content {exc.args[0]}") from None
        if len(rows) == 0:
            return np.zeros((0, self.dim), dtype=self.dtype)
        return np.asarray(self._mmap[rows], dtype=self.dtype)

    @contextmanager
    def _locked(self):
        from filelock import FileLock

        with FileLock(self.dir / ".lock", preserve_lock_file=True):
            yield

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors for keys not cached yet (keys already present are left as they are)."""
        vectors = np.ascontiguousarray(vectors, dtype=self.dtype)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"embedding cache {self.encoder_name}", self.dim,
                                         vectors.shape[1] if vectors.ndim == 2 else -1)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        with self._locked():
            self._refresh()
            fresh = [i for i, k in enumerate(keys) if k not in self._rows and k not in keys[:i]]
            if not fresh:
                return
            # Vectors first, then keys; a torn tail from a crashed append is cut off first.
            with self._vectors_path.open("ab") as fh:
                fh.truncate(self._n_loaded * self._row_bytes)
                fh.write(vectors[fresh].tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            with self._keys_path.open("ab") as fh:
                fh.truncate(self._keys_offset)
                fh.write("".join(f"{keys[i]}\n" for i in fresh).encode())
                fh.flush()
                os.fsync(fh.fileno())
            self._refresh()


class CachedVectorsOnly:
    """An encoder's identity (name, modality, width) without its network, for a process that only
    reads vectors encoded elsewhere (a cluster's scoring actors): `Encoders` opens the same cache."""

    runtime = "cache-only"

    def __init__(self, name: str, modality: str, dim: int, n_parts: int = 0):
        self.name, self.modality, self.dim, self.n_parts = name, modality, int(dim), int(n_parts)

    def encode(self, inputs: Sequence) -> np.ndarray:
        raise RuntimeError(f"{self.name} only reads cached vectors here; {len(inputs)} input(s) were not encoded")

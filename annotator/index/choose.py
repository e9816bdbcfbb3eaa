"""Pick an index layout from (n, dim, memory budget) — a pure function, testable without building.

Like autofaiss: exact search while it is cheap, then IVF with a compressed shortlist (scalar
quantisation, or product quantisation when even that does not fit) and exact re-ranking of the
shortlist from full vectors (in memory, or memory-mapped from disk when they do not fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IndexPlan:
    """How to build an index.

    Attributes
    ----------
    kind : {"flat", "ivf"}
    nlist : int
        IVF lists (0 for flat).
    codec : str
        Shortlist code: ``"SQ8"`` (1 byte/dim) or ``"PQ<m>"`` (m bytes/vector); ``""`` for flat.
    nprobe : int
        Lists visited per query (a starting point; `VectorIndex.tune` raises it to reach recall).
    rerank_factor : int
        The shortlist holds ``k * rerank_factor`` candidates, re-scored exactly.
    vectors_on_disk : bool
        Keep full vectors memory-mapped rather than in RAM.
    """

    kind: str
    nlist: int = 0
    codec: str = ""
    nprobe: int = 0
    rerank_factor: int = 1
    vectors_on_disk: bool = False

    @property
    def factory(self) -> str:
        return "Flat" if self.kind == "flat" else f"IVF{self.nlist},{self.codec}"


def plan_index(n: int, dim: int, *, memory_budget_bytes: int = 4 << 30, exact_threshold: int = 100_000,
               min_points_per_list: int = 39) -> IndexPlan:
    """The index layout for ``n`` vectors of width ``dim`` under ``memory_budget_bytes``.

    Parameters
    ----------
    exact_threshold : int, default=100_000
        Up to this many vectors, exact (flat) search: a brute-force scan is fast enough and exact.
    min_points_per_list : int, default=39
        faiss wants about 39 training points per IVF list; ``nlist`` never exceeds ``n / 39``.
    """
    if n < 0 or dim <= 0:
        raise ValueError(f"need n >= 0 and dim > 0, got n={n}, dim={dim}")
    full_bytes = 4 * n * dim
    if n <= exact_threshold and full_bytes <= memory_budget_bytes:
        return IndexPlan("flat")
    # ~sqrt(n) lists: k-means stays cheap on a small machine, and exact re-ranking of the
    # shortlist (not more lists) is what keeps recall high.
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    nlist = int(max(16, min(nlist, 65536, n // min_points_per_list)))
    if n * dim <= memory_budget_bytes // 2:
        codec, code_bytes, rerank = "SQ8", n * dim, 4
    else:
        m = max(8, min(dim // 2, (memory_budget_bytes // 2) // max(n, 1)))
        while dim % m:  # PQ needs m to divide dim
            m -= 1
        codec, code_bytes, rerank = f"PQ{m}", n * m, 10
    vectors_on_disk = full_bytes + code_bytes > memory_budget_bytes
    return IndexPlan("ivf", nlist=nlist, codec=codec, nprobe=max(8, nlist // 32), rerank_factor=rerank,
                     vectors_on_disk=vectors_on_disk)

"""The index contract, run against every engine: FAISS (`VectorIndex`), Milvus Lite (the embedded
Milvus, one file per test session) and a real Milvus server (standalone, with authentication, one per
test session). Same calls, same answers for exact indexes."""

import subprocess
import sys
import uuid

import numpy as np
import pytest

from annotator.errors import DimensionMismatchError, NotFoundError
from annotator.index import VectorIndex
from tests.unit.index.test_vector_index import brute, normalised

pytest.importorskip("pymilvus")


@pytest.fixture(scope="session")
def milvus_lite(tmp_path_factory):
    from annotator.index.milvus_index import connect

    uri = str(tmp_path_factory.mktemp("milvus") / "vectors.db")
    connect(uri)
    return uri


class Engine:
    """Builds, saves and reloads one engine's indexes."""

    def __init__(self, name, uri=None, token=""):
        self.name, self.uri, self.token = name, uri, token

    @property
    def client(self):
        from annotator.index.milvus_index import connect

        return connect(self.uri, self.token)

    def build(self, ids, x):
        if self.name == "faiss":
            return VectorIndex.build(ids, x)
        from annotator.index.milvus_index import MilvusIndex

        return MilvusIndex.build(self.client, f"t_{uuid.uuid4().hex}", ids, x, uri=self.uri)

    def empty(self, dim):
        return self.build(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))

    def load(self, path):
        if self.name == "faiss":
            return VectorIndex.load(path)
        from annotator.index.milvus_index import MilvusIndex

        return MilvusIndex.load(path, self.client, uri=self.uri)


@pytest.fixture(params=["faiss", "milvus-lite", "milvus-server"])
def engine(request):
    if request.param == "milvus-lite":
        return Engine("milvus-lite", request.getfixturevalue("milvus_lite"))
    if request.param == "milvus-server":
        from annotator.index.milvus_index import milvus_uri
        server = request.getfixturevalue("milvus_server")
        return Engine("milvus-server", milvus_uri(server.uri), server.token)
    return Engine("faiss")


def test_exact_search_returns_the_true_top_k(engine):
    x, ids = normalised(3000), np.arange(3000, dtype=np.int64) * 5 + 7
    index = engine.build(ids, x)
    assert index.plan.kind == "flat" and index.ntotal == 3000
    np.testing.assert_array_equal(index.ids(), ids)
    q = normalised(20, seed=1)
    scores, found = index.search(q, 10)
    np.testing.assert_array_equal(found, brute(q, x, ids, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, (found - 7) // 5, 1), atol=1e-5)


def test_add_remove_replace_and_filters(engine):
    x = normalised(500)
    index = engine.empty(32)
    index.add(np.arange(500), x)
    assert index.remove([3, 3, 999]) == 1 and 3 not in index and index.ntotal == 499
    _, found = index.search(x[3:4], 5)
    assert 3 not in found[0]
    index.add([3], x[3:4])  # re-adding makes it searchable again
    assert index.search(x[3:4], 1)[1][0, 0] == 3
    index.add([4], x[10:11])  # replacing an id's vector
    assert index.search(x[10:11], 2)[1][0].tolist() in ([4, 10], [10, 4])
    np.testing.assert_allclose(index.vectors([4, 0]), x[[10, 0]], atol=1e-6)
    scores, only = index.search(x[0:1], 5, allowed_ids=[7, 8, 9])
    assert sorted(only[0][:3].tolist()) == [7, 8, 9] and (only[0][3:] == -1).all()
    assert np.isinf(scores[0][3:]).all()
    assert (index.search(x[0:1], 3, allowed_ids=[])[1] == -1).all()


def test_filtered_search_is_exact(engine):
    x = normalised(5000, clusters=50)
    index = engine.build(np.arange(len(x)), x)
    allowed = np.arange(0, 5000, 37)
    _, found = index.search(x[:5], 10, allowed_ids=allowed)
    np.testing.assert_array_equal(found, brute(x[:5], x[allowed], allowed, 10))


def test_clear_errors(engine):
    index = engine.empty(32)
    with pytest.raises(DimensionMismatchError, match="expected vectors of dimension 32, got 16"):
        index.add([1], np.zeros((1, 16), np.float32))
    with pytest.raises(ValueError, match="unique"):
        index.add([1, 1], normalised(2))
    with pytest.raises(NotFoundError, match="id 5 is not in the index"):
        index.vector(5)


def test_persists_across_restart(engine, tmp_path):
    """Saved, then searched from a fresh process: the same results."""
    x = normalised(2000, clusters=20)
    index = engine.build(np.arange(2000) + 10, x)
    index.remove(list(range(10, 60)))
    q = normalised(5, seed=3, clusters=20)
    before = index.search(q, 10)
    index.save(tmp_path / "idx")
    if engine.name == "milvus-lite":  # Milvus Lite serves one process at a time: hand the file over
        from annotator.index.milvus_index import disconnect

        disconnect(engine.uri)
    np.save(tmp_path / "q.npy", q)
    script = f"""
import numpy as np, sys
from pathlib import Path
q = np.load({str(tmp_path / "q.npy")!r})
if {engine.name!r} == "faiss":
    from annotator.index import VectorIndex
    index = VectorIndex.load(Path({str(tmp_path / "idx")!r}))
else:
    from annotator.index.milvus_index import MilvusIndex, connect
    uri = {engine.uri!r}
    index = MilvusIndex.load(Path({str(tmp_path / "idx")!r}), connect(uri, {engine.token!r}), uri=uri)
s, i = index.search(q, 10)
np.save({str(tmp_path / "after.npy")!r}, np.concatenate([s, i.astype(np.float32)]))
print(index.ntotal)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1950"
    after = np.load(tmp_path / "after.npy")
    np.testing.assert_array_equal(after[5:].astype(np.int64), before[1])
    np.testing.assert_allclose(after[:5], before[0], atol=1e-5)
    np.testing.assert_array_equal(engine.load(tmp_path / "idx").search(q, 10)[1], before[1])  # and back here

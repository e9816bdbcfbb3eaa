import numpy as np
import pytest

from annotator.encoders.cache import EmbeddingCache
from annotator.errors import DimensionMismatchError


def _vecs(n, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_roundtrip_and_persistence(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc-a", 4)
    v = _vecs(3)
    cache.put(["a", "b", "c"], v)
    assert cache.missing(["a", "x", "c", "x"]) == ["x"]
    np.testing.assert_array_equal(cache.get(["c", "a"]), v[[2, 0]])
    reopened = EmbeddingCache(tmp_path, "enc-a", 4)
    np.testing.assert_array_equal(reopened.get(["a", "b", "c"]), v)
    with pytest.raises(KeyError, match="no cached enc-a embedding for content zzz"):
        reopened.get(["zzz"])


def test_existing_keys_are_not_overwritten_and_encoders_are_separate(tmp_path):
    a = EmbeddingCache(tmp_path, "enc-a", 4)
    a.put(["k"], _vecs(1, seed=1))
    a.put(["k", "k2"], _vecs(2, seed=2))
    np.testing.assert_array_equal(a.get(["k"]), _vecs(1, seed=1))
    b = EmbeddingCache(tmp_path, "enc-b", 4)
    assert b.missing(["k"]) == ["k"]


def test_other_process_appends_are_seen(tmp_path):
    reader, writer = EmbeddingCache(tmp_path, "e", 4), EmbeddingCache(tmp_path, "e", 4)
    writer.put(["late"], _vecs(1))
    assert reader.missing(["late"]) == []


def test_dimension_mismatch_is_refused(tmp_path):
    EmbeddingCache(tmp_path, "e", 4)
    with pytest.raises(DimensionMismatchError, match="expected vectors of dimension 4, got 8"):
        EmbeddingCache(tmp_path, "e", 8)
    with pytest.raises(DimensionMismatchError):
        EmbeddingCache(tmp_path, "e", 4).put(["x"], _vecs(1, d=3))


def test_torn_append_loses_only_that_append(tmp_path):
    cache = EmbeddingCache(tmp_path, "e", 4)
    cache.put(["a", "b"], _vecs(2))
    # A crash after writing vectors (and half a key) but before the key line completed:
    with open(cache.dir / "vectors.f32", "ab") as fh:
        fh.write(_vecs(1, seed=9).tobytes()[:10])
    with open(cache.dir / "keys.txt", "ab") as fh:
        fh.write(b"half")
    recovered = EmbeddingCache(tmp_path, "e", 4)
    assert recovered.missing(["a", "b", "half"]) == ["half"]
    recovered.put(["c"], _vecs(1, seed=3))
    again = EmbeddingCache(tmp_path, "e", 4)
    np.testing.assert_array_equal(again.get(["a", "b", "c"]), np.vstack([_vecs(2), _vecs(1, seed=3)]))


def test_float16_rows_roundtrip_and_a_cache_keeps_its_dtype(tmp_path):
    parts = _vecs(3, d=12).astype(np.float16)
    cache = EmbeddingCache(tmp_path, "text:x:parts", 12, dtype="float16")
    cache.put(["a", "b", "c"], parts)
    reopened = EmbeddingCache(tmp_path, "text:x:parts", 12, dtype="float16")
    assert reopened.get(["c", "a"]).dtype == np.float16
    np.testing.assert_array_equal(reopened.get(["c", "a"]), parts[[2, 0]])
    assert (tmp_path / reopened.dir.name / "vectors.f32").stat().st_size == 3 * 12 * 2  # half the bytes
    with pytest.raises(ValueError, match="holds float16"):
        EmbeddingCache(tmp_path, "text:x:parts", 12)

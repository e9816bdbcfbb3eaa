"""VectorIndex against a brute-force oracle, on seeded synthetic data: what only the FAISS engine
has (IVF, range search, crash-safe saves). The contract both engines share is in test_index_contract.py."""

import multiprocessing
import os
import signal
import time

import numpy as np

from annotator.index import VectorIndex


def normalised(n, d=32, seed=0, clusters=None):
    rng = np.random.default_rng(seed)
    if clusters:
        x = rng.normal(size=(clusters, d))[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    else:
        x = rng.normal(size=(n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(queries, x, ids, k):
    scores = queries @ x.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return ids[order]


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def test_ivf_with_rerank_reaches_recall_on_clustered_data():
    x = normalised(40_000, d=48, clusters=200)
    ids = np.arange(len(x), dtype=np.int64)
    index = VectorIndex.build(ids, x, exact_threshold=1000)
    assert index.plan.kind == "ivf"
    q = normalised(200, d=48, seed=5, clusters=200)
    _, found = index.search(q, 10)
    assert recall(found, brute(q, x, ids, 10)) >= 0.95


def test_filtered_search_on_ivf_is_exact():
    x = normalised(20_000, clusters=100)
    index = VectorIndex.build(np.arange(len(x)), x, exact_threshold=1000)
    allowed = np.arange(0, 20_000, 97)
    _, found = index.search(x[:5], 10, allowed_ids=allowed)
    np.testing.assert_array_equal(found, brute(x[:5], x[allowed], allowed, 10))


def test_save_load_roundtrip_keeps_results_identical(tmp_path):
    for threshold in (10**6, 1000):
        x = normalised(5000, clusters=50)
        index = VectorIndex.build(np.arange(5000) + 100, x, exact_threshold=threshold)
        index.remove(list(range(100, 400)))
        index.add([99_999], x[:1])
        q = normalised(20, seed=3, clusters=50)
        before = index.search(q, 10)
        index.save(tmp_path / str(threshold))
        loaded = VectorIndex.load(tmp_path / str(threshold))
        after = loaded.search(q, 10)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0], rtol=1e-5)
        assert loaded.ntotal == index.ntotal == 4701 and loaded.nprobe == index.nprobe


def test_range_search_matches_brute_force():
    x = normalised(2000, clusters=20)
    index = VectorIndex.build(np.arange(2000), x)
    [(ids, scores)] = index.range_search(x[:1], 0.8)
    expected = np.flatnonzero(x @ x[0] >= 0.8)
    assert set(ids.tolist()) == set(expected.tolist())
    assert (np.diff(scores) <= 1e-6).all()


def _save_forever(path):
    x = normalised(20_000, d=64)
    index = VectorIndex.build(np.arange(len(x)), x)
    while True:
        index.save(path)


def test_kill_during_save_leaves_previous_index_loadable(tmp_path):
    x = normalised(1000)
    VectorIndex.build(np.arange(1000), x).save(tmp_path / "idx")
    ctx = multiprocessing.get_context("fork")
    for delay in (0.05, 0.2, 0.35):
        proc = ctx.Process(target=_save_forever, args=(tmp_path / "idx",))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        loaded = VectorIndex.load(tmp_path / "idx")  # whichever generation was current
        assert loaded.ntotal in (1000, 20_000)
        assert loaded.search(normalised(1, d=loaded.dim), 3)[1].shape == (1, 3)

from annotator.index import plan_index


def test_small_collections_are_exact():
    assert plan_index(50_000, 384).kind == "flat"


def test_large_collections_get_ivf_with_sq8_and_rerank():
    plan = plan_index(1_000_000, 384)
    assert plan.kind == "ivf" and plan.codec == "SQ8" and plan.rerank_factor >= 2
    assert 512 <= plan.nlist <= 8192 and plan.factory == f"IVF{plan.nlist},SQ8"
    assert not plan.vectors_on_disk


def test_tight_memory_switches_to_pq_and_disk_vectors():
    plan = plan_index(10_000_000, 384, memory_budget_bytes=2 << 30)
    assert plan.codec.startswith("PQ") and 384 % int(plan.codec[2:]) == 0
    assert plan.vectors_on_disk


def test_nlist_never_exceeds_training_points():
    plan = plan_index(200_000, 64, exact_threshold=1000)
    assert plan.nlist <= 200_000 // 39

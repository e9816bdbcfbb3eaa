"""Cross-modal search on the bundled sample project, with the real offline encoders."""

import json
import shutil

import pytest

from annotator.config import Settings
from annotator.sample_data import SAMPLE_DIR
from annotator.indexing import embed_project
from annotator.errors import MediaError, NotFoundError
from annotator.importer import import_manifest
from annotator.index.cross_modal import ProjectIndex
from annotator.encoders.registry import Encoders
from annotator.store import open_store, repo
from tests.conftest import DATA


@pytest.fixture(scope="module")
def project(tmp_path_factory, offline_encoders):
    root = tmp_path_factory.mktemp("xm")
    settings = Settings(data_dir=root / "data")
    store = open_store(settings)
    encoders = Encoders(settings, overrides=dict(offline_encoders))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=SAMPLE_DIR / "items.jsonl")
    report = embed_project(store, settings, project_name="p", encoders=encoders, progress=False)
    return settings, store, encoders, report, root


def _index(project):
    settings, store, encoders, _, _ = project
    return ProjectIndex(settings, "p", encoders)


def test_embed_builds_native_and_shared_indexes(project):
    report = project[3]
    assert report.index["aligned"] is True
    assert report.index["indexes"] == {"native-audio": 16, "native-image": 48, "native-text": 48,
                                       "shared-audio": 16, "shared-image": 48, "shared-text": 48}


def test_text_query_finds_images_of_the_right_kind(project):
    hits = _index(project).search(project[1], text="an emoji of a car", k=5, modality="image")
    assert len(hits) == 5 and all(h.modality == "image" for h in hits)
    transport = {json.loads(line)["id"] for line in (SAMPLE_DIR / "items.jsonl").read_text().splitlines()
                 if json.loads(line)["id"].startswith("1F6")}
    assert sum(h.id in transport for h in hits) >= 3  # the shared space carries meaning across modalities


def test_same_modality_search_uses_native_space(project):
    path = str(SAMPLE_DIR / "media" / "1F40A.png")
    hits = _index(project).search(project[1], image=path, k=3, modality="image", trusted=True)  # the operator's own query
    assert hits[0].id == "1F40A" and hits[0].score > 0.99


def test_item_query_excludes_itself_and_filters_apply(project):
    idx = _index(project)
    hits = idx.search(project[1], item="1F40A", k=5)
    assert "1F40A" not in [h.id for h in hits] and len(hits) == 5
    with project[1].session() as s:
        p = repo.get_project(s, name="p")
        labels = repo.current_labels(s, project=p)
        names = repo.external_ids(s, project=p)
    animals = {names[pk] for pk, v in labels.items() if v == ["animal"]}
    labelled = idx.search(project[1], item="1F40A", k=5, label="animal")
    assert labelled and {h.id for h in labelled} <= animals
    unlabelled = idx.search(project[1], text="food", k=48, has_label=False)
    assert not {h.id for h in unlabelled} & {names[pk] for pk in labels}


def test_bad_queries_say_what_is_wrong(project, tmp_path):
    idx = _index(project)
    with pytest.raises(NotFoundError, match="no item"):
        idx.search(project[1], item="no-such-item")
    with pytest.raises(MediaError, match="truncated.png: corrupt or truncated image"):
        idx.search(project[1], image=str(DATA / "truncated.png"), trusted=True)
    with pytest.raises(MediaError, match="file not found"):
        idx.search(project[1], image=str(tmp_path / "missing.png"), trusted=True)


def test_new_items_searchable_after_embed_and_deleted_items_gone_at_once(project, tmp_path):
    settings, store, encoders, _, _ = project
    shutil.copy(DATA / "cat.png", tmp_path / "cat.png")
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "new-cat", "image": "cat.png", "text": "a photo of a cat"}))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "more.jsonl")
    report = embed_project(store, settings, project_name="p", encoders=encoders, progress=False)
    assert report.index["indexes"]["native-image"] == 49 and report.index["aligner_refit"] is False
    idx = ProjectIndex(settings, "p", encoders)
    assert idx.search(store, image=str(DATA / "cat.png"), k=1, modality="image", trusted=True)[0].id == "new-cat"
    with store.session() as s:
        repo.delete_items(s, project=repo.get_project(s, name="p"), external_ids=["new-cat"])
    assert "new-cat" not in [h.id for h in idx.search(store, image=str(DATA / "cat.png"), k=5, modality="image", trusted=True)]
    assert embed_project(store, settings, project_name="p", encoders=encoders,
                         progress=False).index["indexes"]["native-image"] == 48


def test_near_duplicates_are_grouped(project, tmp_path):
    settings, store, encoders, _, _ = project
    rows = [{"id": f"dup-{i}", "image": str(SAMPLE_DIR / "media" / "1F680.png")} for i in range(2)]
    (tmp_path / "dups.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with store.session() as s:
        import_manifest(s, project_name="p", manifest=tmp_path / "dups.jsonl")
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False)
    groups = ProjectIndex(settings, "p", encoders).duplicates(store, threshold=0.99, modality="image")
    assert {"modality": "image", "items": ["1F680", "dup-0", "dup-1"], "min_score": pytest.approx(1.0, abs=1e-4)} in groups
    with store.session() as s:
        repo.delete_items(s, project=repo.get_project(s, name="p"), external_ids=["dup-0", "dup-1"])
    embed_project(store, settings, project_name="p", encoders=encoders, progress=False)


def test_an_update_that_changes_nothing_writes_no_new_generation(project):
    """Every worker reloads an index whose generation moved: an embed with nothing new must not move it."""
    from annotator.artifacts import current_generation

    settings, store, encoders, _, _ = project
    idx = ProjectIndex(settings, "p", encoders)
    keys = [("native", "image"), ("shared", "text")]
    before = {key: current_generation(idx._path(*key) / "current") for key in keys}
    assert all(before.values())
    assert ProjectIndex(settings, "p", encoders).update(store).indexes["native-image"] == 48
    assert {key: current_generation(idx._path(*key) / "current") for key in keys} == before


def test_index_missing_ids_are_readded_from_the_store(project):
    settings, store, encoders, _, _ = project
    idx = ProjectIndex(settings, "p", encoders)
    native = idx.index("native", "text")
    some = native.ids()[:5].tolist()
    native.remove(some)
    native.save(idx._path("native", "text"))
    report = ProjectIndex(settings, "p", encoders).update(store)
    assert report.indexes["native-text"] == 48


@pytest.mark.parametrize("deployment", ["lite", "server"])
def test_milvus_vector_store_answers_like_faiss(project, tmp_path, request, deployment):
    """The same project on Milvus (Milvus Lite, the embedded one, and a real Milvus server with a
    token): switching the vector store rebuilds the indexes there, and exact search gives FAISS's
    results: text→image, item→similar with a label filter, near-duplicates; a deleted item leaves
    Milvus on the next embed."""
    pytest.importorskip("pymilvus")
    from pydantic import SecretStr

    from annotator.index.milvus_index import disconnect, milvus_uri

    settings, store, encoders, _, _ = project
    if deployment == "lite":
        milvus = settings.model_copy(update={"vector_store": f"milvus-lite://{tmp_path / 'vectors.db'}"})
    else:
        server = request.getfixturevalue("milvus_server")
        milvus = settings.model_copy(update={"vector_store": server.uri, "milvus_token": SecretStr(server.token)})
    queries = [dict(text="an emoji of a car", k=8, modality="image"), dict(item="1F40A", k=6, label="animal"),
               dict(text="food", k=10)]
    expected = [[(h.id, round(h.score, 4)) for h in _index(project).search(store, **q)] for q in queries]
    expected_duplicates = _index(project).duplicates(store, threshold=0.9)
    data = None
    try:
        report = ProjectIndex(milvus, "p", encoders).update(store)
        assert report.indexes["native-image"] == 48 and report.indexes["shared-text"] == 48
        idx = ProjectIndex(milvus, "p", encoders)
        assert type(idx.index("native", "image")).__name__ == "MilvusIndex"
        assert [[(h.id, round(h.score, 4)) for h in idx.search(store, **q)] for q in queries] == expected
        assert idx.duplicates(store, threshold=0.9) == expected_duplicates
        with store.session() as s:
            item = repo.list_items(s, project=repo.get_project(s, name="p"), external_ids=["1F40A"])[0]
            pk, data = item.id, dict(item.data)
            repo.delete_items(s, project=repo.get_project(s, name="p"), external_ids=["1F40A"])
        assert ProjectIndex(milvus, "p", encoders).update(store).indexes["native-image"] == 47
        assert pk not in ProjectIndex(milvus, "p", encoders).index("native", "image").ids()
    finally:
        disconnect(milvus_uri(milvus.vector_store))
        if data is not None:  # the deleted item comes back for the module's other tests
            (tmp_path / "back.jsonl").write_text(json.dumps({"id": "1F40A", **data}))
            with store.session() as s:
                import_manifest(s, project_name="p", manifest=tmp_path / "back.jsonl")
        embed_project(store, settings, project_name="p", encoders=encoders, progress=False)  # back on FAISS

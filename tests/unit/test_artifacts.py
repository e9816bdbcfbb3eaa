"""Artifact folders: atomic generations, and sharing model versions and indexes between hosts."""

from __future__ import annotations

import numpy as np
import pytest

from annotator.artifacts import SharedArtifacts, atomic_directory, current_generation
from annotator.encoders.registry import Encoders
from annotator.runtime import Runtime
from annotator.store import open_store, repo
from tests.unit.test_training import make_project


def test_a_generation_replaces_the_last_whole_or_not_at_all(tmp_path):
    path = tmp_path / "model"
    with atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text("one")
    first = current_generation(path)
    with pytest.raises(RuntimeError), atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert (path / "a.txt").read_text() == "one" and current_generation(path) == first
    with atomic_directory(path) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (path / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", current_generation(path)])  # old one gone


def test_shared_artifacts_publish_a_whole_generation_and_refresh_downloads_it(tmp_path):
    here, there = tmp_path / "host-a", tmp_path / "host-b"
    a = SharedArtifacts(f"file://{tmp_path / 'bucket'}", here)
    b = SharedArtifacts(f"file://{tmp_path / 'bucket'}", there)
    assert b.refresh(there / "projects/p/index/current") is False  # nothing shared yet
    with atomic_directory(here / "projects/p/index/current") as tmp:
        (tmp / "ids.npy").write_bytes(b"1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x").write_text("y")
    a.publish(here / "projects/p/index/current")
    assert b.refresh(there / "projects/p/index/current") is True
    assert (there / "projects/p/index/current/sub/x").read_text() == "y"
    assert b.refresh(there / "projects/p/index/current") is False  # already the current generation
    assert current_generation(there / "projects/p/index/current") == current_generation(here / "projects/p/index/current")


@pytest.fixture(params=["file", "s3"])
def shared_url(request, tmp_path, monkeypatch) -> str:
    """Where the hosts share artifacts: a folder, or a bucket on the local S3 server, reached as
    s3fs reaches any S3-compatible store (the usual AWS variables, ``AWS_ENDPOINT_URL`` included)."""
    if request.param == "file":
        return f"file://{tmp_path / 'bucket'}"
    endpoint = request.getfixturevalue("s3_server")
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    from fsspec.core import url_to_fs

    bucket = f"annotator-{tmp_path.name.lower().replace('_', '-')[-30:]}"
    url_to_fs(f"s3://{bucket}")[0].mkdir(bucket)
    return f"s3://{bucket}/shared"


def test_a_second_host_serves_the_model_and_searches_the_index_the_first_one_wrote(settings, encoders,
                                                                                   offline_encoders, tmp_path,
                                                                                   shared_url):
    """Two data dirs, one database, one shared store (a folder, or an S3 bucket): the version and
    the index one host wrote serve and search on the other."""
    from annotator.indexing import embed_project
    from annotator.prediction import predict
    from annotator.training import retrain

    shared = shared_url
    host_a = settings.model_copy(update={"artifacts_url": shared, "artifacts_poll_s": 0})
    host_b = host_a.model_copy(update={"data_dir": tmp_path / "host-b"})  # same database, its own disk
    store = open_store(host_a)
    make_project(store, tmp_path, n_per_class=8)
    retrain(store, host_a, project_name="p", head="logreg", encoders=encoders, progress=False)
    embed_project(store, host_a, project_name="p", encoders=encoders, progress=False)

    runtime_b = Runtime(host_b, encoders=Encoders(host_b, overrides=dict(offline_encoders)))
    with store.session() as s:
        model = runtime_b.active_model(s, repo.get_project(s, name="p"))
    assert model.version == "v1" and (tmp_path / "host-b/projects/p/models/v1/meta.json").exists()
    ours = predict(store, host_a, project_name="p", runtime=Runtime(host_a, encoders=encoders), save=False, progress=False)
    theirs = predict(store, host_b, project_name="p", runtime=runtime_b, save=False, progress=False)
    assert [p["label"] for p in theirs.predictions] == [p["label"] for p in ours.predictions]
    np.testing.assert_allclose([p["score"] for p in theirs.predictions], [p["score"] for p in ours.predictions], rtol=1e-5)

    query = {"text": "a picture of a bus", "k": 5, "modality": "text"}
    index_b = runtime_b.project_index("p")
    before = [h.id for h in index_b.search(store, **query)]
    assert before == [h.id for h in Runtime(host_a, encoders=encoders).project_index("p").search(store, **query)]
    with store.session() as s:  # host A adds an item and re-indexes; host B sees it on its next search
        repo.upsert_items(s, project=repo.get_project(s, name="p"), records=[repo.ItemRecord(
            external_id="new-bus", data={"text": "a picture of a bus"}, text_sha=None)])
    embed_project(store, host_a, project_name="p", encoders=encoders, progress=False)
    assert index_b.search(store, **query)[0].id == "new-bus"
    store.close()

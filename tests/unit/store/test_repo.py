import pytest
from sqlalchemy import func, select

from annotator.errors import NotFoundError
from annotator.store import open_store, repo
from annotator.store.models import Item, Label, Project


def _exercise(store):
    with store.session() as s:
        p = repo.get_or_create_project(s, name="p")
        ids = repo.upsert_items(s, project=p, records=[
            repo.ItemRecord("a", {"text": "one"}), repo.ItemRecord("b", {"text": "two"})])
        repo.upsert_labels(s, project=p, records=[
            repo.LabelRecord(ids["a"], ["x"], "ls:1"), repo.LabelRecord(ids["b"], ["y"], "ls:2")])
    with store.session() as s:
        p = repo.get_project(s, name="p")
        ids = repo.upsert_items(s, project=p, records=[repo.ItemRecord("a", {"text": "uno"})])
        repo.upsert_labels(s, project=p, records=[repo.LabelRecord(ids["a"], ["z"], "ls:1")])
        assert repo.soft_delete_labels(s, project=p, annotation_keys=["ls:2"]) == 1
    with store.session() as s:
        p = repo.get_project(s, name="p")
        assert s.scalar(select(func.count()).select_from(Item)) == 2
        assert s.scalar(select(func.count()).select_from(Label)) == 2  # soft delete keeps the row
        labels = repo.current_labels(s, project=p)
        items = {i.external_id: i for i in repo.list_items(s, project=p)}
        assert labels == {items["a"].id: ["z"]}
        assert items["a"].data == {"text": "uno"}


def test_repository_upserts_on_sqlite(store):
    _exercise(store)


@pytest.mark.postgres
def test_repository_upserts_on_postgres(pg_database, settings):
    _exercise(open_store(settings.model_copy(update={"database_url": pg_database})))


def test_unknown_project_lists_known_ones(store):
    with store.session() as s:
        repo.get_or_create_project(s, name="alpha")
    with store.session() as s, pytest.raises(NotFoundError, match="known projects: alpha"):
        repo.get_project(s, name="beta")


def test_promote_retires_previous_active(store):
    with store.session() as s:
        p = repo.get_or_create_project(s, name="p")
        for v in ("v1", "v2"):
            s.add(repo.ModelVersion(project_id=p.id, version=v, head="concat", artifact_path="/x"))
        s.flush()
        repo.promote_model_version(s, project=p, version="v1")
        repo.promote_model_version(s, project=p, version="v2")
        states = {m.version: m.status for m in repo.list_model_versions(s, project=p)}
        assert states == {"v1": "retired", "v2": "active"}
        assert repo.active_model_version(s, project=p).version == "v2"


def test_a_transaction_that_lost_an_insert_race_runs_again(store):
    """Two writers both found no project and both inserted it: the loser's transaction is rolled back
    and rerun, and then finds the winner's row."""
    import threading

    attempts = []

    def create(session):
        attempts.append(1)
        if len(attempts) == 1:  # another request inserts the same project between our read and our insert
            assert session.scalar(select(func.count()).select_from(Project)) == 0
            winner = threading.Thread(target=lambda: store.run(lambda s: repo.get_or_create_project(s, name="p")))
            winner.start()
            winner.join()
            session.add(Project(name="p"))
            session.flush()
        return repo.get_or_create_project(session, name="p").id

    pid = store.run(create)
    assert len(attempts) == 2
    with store.session() as s:
        assert [p.id for p in s.scalars(select(Project))] == [pid]


def test_other_errors_are_not_retried(store):
    attempts = []

    def broken(session):
        attempts.append(1)
        raise ValueError("not a race")

    with pytest.raises(ValueError, match="not a race"):
        store.run(broken)
    assert attempts == [1]

"""Unauthenticated events on a big project pull only what changed: a real Label Studio project of
20,000 tasks, events arriving after its first (full) pull; the trainer's next pulls list the few
tasks whose annotations were created, updated or deleted, and store exactly that."""

from __future__ import annotations

import time

import pytest

from annotator.backend import Backend
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.labelstudio import client as ls_api
from annotator.runtime import Runtime
from annotator.store import open_store, repo
from annotator.trainer import PULL_OVERLAP_S, Trainer

pytestmark = pytest.mark.integration
N_TASKS = 20_000
CONFIG = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
  <Choice value="sport"/><Choice value="money"/></Choices></View>"""


def _choice(value: str) -> list[dict]:
    return [{"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]


@pytest.mark.slow
def test_events_on_a_project_of_20000_tasks_pull_only_the_changed_ones(label_studio, ls_client, offline_encoders,
                                                                       tmp_path, monkeypatch):
    project = ls_client.projects.create(title="annotator-incremental", label_config=CONFIG)
    for start in range(0, N_TASKS, 5000):
        ls_client.projects.import_tasks(id=project.id, request=[{"text": f"task {i}"} for i in range(start, start + 5000)])
    settings = Settings(data_dir=tmp_path / "data", label_studio_url=label_studio.url)  # the operator's Label Studio
    store = open_store(settings)
    backend = Backend(settings, store=store, runtime=Runtime(settings, encoders=Encoders(settings, overrides=dict(offline_encoders))))
    trainer = Trainer(settings, store=store, runtime=backend.runtime)
    backend.setup(project=project.id, schema=CONFIG, hostname=label_studio.url, access_token=label_studio.token)
    listed = []  # how many tasks each pull listed
    real_list = ls_api.list_tasks
    monkeypatch.setattr(ls_api, "list_tasks", lambda *a, **k: listed.append(len(out := real_list(*a, **k))) or out)
    monkeypatch.setattr("annotator.trainer.SYNC_MIN_INTERVAL_S", 0.0)

    def event_then_pull() -> None:  # an event without the webhook secret: a hint to pull the project
        backend.webhook({"action": "ANNOTATION_CREATED", "project": {"id": project.id}})
        assert trainer.sync_requested_projects() == [f"ls-{project.id}"]

    def labels() -> dict[str, list[str]]:
        with store.session() as s:
            p = repo.get_project(s, name=f"ls-{project.id}")
            items = {it.id: it.external_id for it in repo.list_items(s, project=p)}
            return {items[k]: v for k, v in repo.current_labels(s, project=p).items()}

    tasks = [t.id for t in ls_client.tasks.list(project=project.id, page_size=1000)]
    time.sleep(PULL_OVERLAP_S + 1)  # the import is history: annotating starts later
    first = ls_client.annotations.create(id=tasks[0], result=_choice("sport"))
    event_then_pull()  # the first pull of this process lists every task
    assert listed == [N_TASKS] and labels() == {str(tasks[0]): ["sport"]}
    with store.session() as s:
        assert len(repo.list_items(s, project=repo.get_project(s, name=f"ls-{project.id}"))) == N_TASKS

    ls_client.annotations.create(id=tasks[1], result=_choice("money"))
    ls_client.annotations.create(id=tasks[-1], result=_choice("sport"))
    ls_client.annotations.update(id=first.id, result=_choice("money"))
    event_then_pull()
    assert listed[-1] == 3  # the three changed tasks, not 20,000
    assert labels() == {str(tasks[0]): ["money"], str(tasks[1]): ["money"], str(tasks[-1]): ["sport"]}

    ls_client.annotations.delete(id=first.id)  # a deletion moves its task's updated_at too
    event_then_pull()
    assert listed[-1] <= 3 and str(tasks[0]) not in labels() and len(labels()) == 2  # 3: within the overlap
    backend.close()
    store.close()

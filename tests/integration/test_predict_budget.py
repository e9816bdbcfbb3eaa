"""Label Studio's "Retrieve predictions" sends every selected task in one /predict and gives up after
100 s. With 5,000 new tasks the backend answers within its budget and every task still gets its
prediction in a real Label Studio: what was not ready is pushed in bulk once encoded."""

from __future__ import annotations

import time

import pytest

from annotator.backend import Backend
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.labelstudio.client import list_tasks
from annotator.runtime import Runtime
from annotator.store import open_store

pytestmark = pytest.mark.integration

CONFIG = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
  <Choice value="animal"/><Choice value="vehicle"/><Choice value="food"/></Choices></View>"""
WORDS = ["dog", "cat", "horse", "bus", "truck", "train", "pizza", "bread", "soup"]


def test_five_thousand_new_tasks_answer_within_the_budget_and_all_get_predictions(label_studio, ls_client,
                                                                                  offline_encoders, tmp_path):
    n, budget = 5000, 3.0
    project = ls_client.projects.create(title="annotator-budget", label_config=CONFIG)
    ls_client.projects.import_tasks(id=project.id, request=[
        {"text": f"note {i}: a {WORDS[i % len(WORDS)]} seen near gate {i % 97}"} for i in range(n)])
    tasks = [{"id": t["id"], "data": t["data"]} for t in list_tasks(ls_client, project.id)]
    assert len(tasks) == n
    # Label Studio's URL and token reach the backend only through /setup, as with a project added in its UI;
    # without basic auth, its loopback address is reached because the operator allows it (#33)
    settings = Settings(data_dir=tmp_path / "data", predict_budget_s=budget, media_allow_hosts="127.0.0.1")
    store = open_store(settings)
    backend = Backend(settings, store=store, runtime=Runtime(settings, encoders=Encoders(settings, overrides=dict(offline_encoders))))
    backend.setup(project=project.id, schema=CONFIG, hostname=label_studio.url, access_token=label_studio.token)

    started = time.perf_counter()
    results = backend.predict(tasks=tasks, project=project.id, label_config=CONFIG)["results"]
    answered_in = time.perf_counter() - started
    assert answered_in < 100  # Label Studio's /predict timeout
    answered = {t["id"] for t, r in zip(tasks, results) if r["result"]}
    pending = {t["id"] for t, r in zip(tasks, results) if r["model_version"] == "zero-shot-pending"}
    assert pending and answered and not pending & answered and len(answered | pending) == n

    backend.close(timeout_s=600)  # the background job encodes the rest and pushes their predictions
    pushed = [p if isinstance(p, dict) else p.model_dump() for p in ls_client.predictions.list(project=project.id)]
    pushed_tasks = {p["task"] for p in pushed if p["model_version"] == "zero-shot" and p["result"]}
    assert pushed_tasks == pending  # every pending task, once; the answered ones Label Studio stores itself
    assert ls_client.projects.get(id=project.id).model_version == "zero-shot"
    store.close()

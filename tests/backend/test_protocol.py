"""Every route of the ML backend protocol, through FastAPI's TestClient, with real models and SQLite."""

import base64
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient

from annotator.backend import Backend
from annotator.runtime import Runtime
from annotator.store import open_store
from annotator.trainer import Trainer
from annotator.store import repo
from annotator.backends.app import create_app
from tests.conftest import DATA

CONFIG = """<View><Image name="image" value="$image"/><Text name="caption" value="$text"/>
<Choices name="kind" toName="image"><Choice value="animal"/><Choice value="vehicle" alias="car-like"/><Choice value="food"/></Choices></View>"""
WORDS = {"animal": ["dog", "cat", "horse", "owl"], "vehicle": ["car", "bus", "truck", "train"],
         "food": ["pizza", "apple", "bread", "soup"]}


def task(i, text, image=None):
    data = {"text": text, "image": image or str(DATA / "cat.png")}
    return {"id": i, "data": data, "project": 7, "annotations": [], "predictions": []}


def tasks_for_all():
    out, i = [], 1
    for label, words in WORDS.items():
        for w in words * 2:
            out.append((task(i, f"a photo of a {w}"), label))
            i += 1
    return out


def annotation_event(ann_id, task_obj, label, action="ANNOTATION_CREATED", cancelled=False):
    return {"action": action, "project": {"id": 7, "label_config": CONFIG},
            "task": task_obj, "annotation": {"id": ann_id, "task": task_obj["id"], "was_cancelled": cancelled,
                                             "completed_by": 1, "result": [] if cancelled else [
                                                 {"from_name": "kind", "to_name": "image", "type": "choices",
                                                  "value": {"choices": [label]}}]}}


@pytest.fixture
def backend(settings, encoders):
    store = open_store(settings)
    yield Backend(settings, store=store, runtime=Runtime(settings, encoders=encoders))
    store.close()


@pytest.fixture
def trainer(settings, backend):
    """The trainer, driven by hand (no thread), on the backend's store and runtime."""
    return Trainer(settings, store=backend.store, runtime=backend.runtime, debounce_s=5, debounce_labels=1000)


@pytest.fixture
def client(settings, backend):
    with TestClient(create_app(settings, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        yield c


def test_health_and_setup(client):
    health = client.get("/health").json()
    assert (health["status"], health["database"], health["loaded_versions"]) == ("UP", "ok", {})
    assert client.get("/").status_code == 200
    body = {"project": "7.1717000000", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "t"}
    assert client.post("/setup", json=body).json() == {"model_version": "zero-shot"}
    assert client.post("/setup", json=body).json() == {"model_version": "zero-shot"}  # idempotent


def test_bad_bodies_get_clear_errors(client):
    r = client.post("/setup", json={"project": "7.1"})
    assert r.status_code == 422 and r.json() == {"detail": "invalid request: schema: Field required"}
    r = client.post("/setup", json={"project": "7.1", "schema": "<View><Image"})
    assert r.status_code == 400 and "not valid XML" in r.json()["detail"]
    r = client.post("/setup", json={"project": "abc", "schema": CONFIG})
    assert r.status_code == 400 and "cannot read a Label Studio project id from 'abc'" in r.json()["detail"]
    r = client.post("/predict", json={"tasks": [{"data": {}}], "project": "7.1", "label_config": CONFIG})
    assert r.status_code == 400 and "has no id" in r.json()["detail"]
    r = client.post("/webhook", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_predict_zero_shot_one_result_per_task_in_order_and_bad_media_isolated(client):
    tasks = [task(1, "a photo of a dog"), task(2, "a red bus on the road", image=str(DATA / "truncated.png")),
             task(3, "a slice of pizza"), task(4, "no image here", image=str(DATA / "missing.png"))]
    r = client.post("/predict", json={"tasks": tasks, "project": "7.1717", "label_config": CONFIG,
                                      "params": {"login": None, "password": None, "context": None}})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 4 and all(res["model_version"] == "zero-shot" for res in results)
    labels = [res["result"][0]["value"]["choices"][0] if res["result"] else None for res in results]
    assert labels[0] == "animal" and labels[2] == "food"
    assert labels[1] == "car-like"  # text still works when the image is corrupt; alias written
    assert all(0 < res["score"] <= 0.5 for res in results if res["result"])  # zero-shot is never confident
    region = results[0]["result"][0]
    assert (region["from_name"], region["to_name"], region["type"]) == ("kind", "image", "choices")


def test_webhooks_record_idempotently_and_training_changes_the_version(client, backend, trainer):
    pairs = tasks_for_all()
    for n, (t, label) in enumerate(pairs):
        ev = annotation_event(100 + n, t, "car-like" if label == "vehicle" else label)
        assert client.post("/webhook", json=ev).json() == {"status": "ok", "action": "ANNOTATION_CREATED", "recorded": 1}
    client.post("/webhook", json=annotation_event(100, pairs[0][0], "animal"))  # a repeat: no second label
    skip = annotation_event(999, pairs[1][0], None, cancelled=True)
    assert client.post("/webhook", json=skip).json()["recorded"] == 0
    with backend.store.session() as s:
        p = repo.get_project(s, name="ls-7")
        labels = repo.current_labels(s, project=p)
        assert len(labels) == len(pairs)
        assert sorted({v[0] for v in labels.values()}) == ["animal", "food", "vehicle"]
    gone = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 101}],
                                         "project": {"id": 7}}).json()
    assert gone["deleted"] == 1
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}}).json()["status"] == "ignored"

    assert trainer.train_due_projects() == []  # labels are fresh: debounce holds
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7, "label_config": CONFIG}}).json() == \
        {"status": "ok", "action": "START_TRAINING", "training": "requested"}
    assert trainer.train_due_projects() == ["v1"]
    assert trainer.train_due_projects() == []  # nothing new since
    assert client.post("/setup", json={"project": "7.1", "schema": CONFIG}).json() == {"model_version": "v1"}
    results = client.post("/predict", json={"tasks": [pairs[0][0]], "project": "7.1", "label_config": CONFIG}).json()["results"]
    assert results[0]["model_version"] == "v1" and results[0]["result"][0]["value"]["choices"] == ["animal"]
    assert client.get("/versions").json() == {"versions": ["v1"]}


def test_quiet_period_debounce_trains_once_after_a_storm(client, backend, trainer):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", json=annotation_event(500 + n, t, "car-like" if label == "vehicle" else label))
    now = datetime.now(timezone.utc)
    assert trainer.train_due_projects(now=now + timedelta(seconds=1)) == []
    assert trainer.train_due_projects(now=now + timedelta(seconds=10)) == ["v1"]
    assert trainer.train_due_projects(now=now + timedelta(seconds=20)) == []


def test_a_second_process_picks_up_a_promoted_version(client, trainer, settings, encoders):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", json=annotation_event(700 + n, t, "car-like" if label == "vehicle" else label))
    other = Backend(settings, store=open_store(settings), runtime=Runtime(settings, encoders=encoders))
    first = other.predict(tasks=[tasks_for_all()[0][0]], project="7.1", label_config=CONFIG)["results"][0]
    assert first["model_version"] == "zero-shot"
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    trainer.train_due_projects()
    again = other.predict(tasks=[tasks_for_all()[0][0]], project="7.1", label_config=CONFIG)["results"][0]
    assert again["model_version"] == "v1"
    other.store.close()


def test_basic_auth_everywhere_but_the_webhook(settings, backend):
    from pydantic import SecretStr

    secured = settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": SecretStr("p")})
    with TestClient(create_app(secured, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        assert c.get("/health").status_code == 401
        assert c.post("/setup", json={"project": "7", "schema": CONFIG}).status_code == 401
        good = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
        assert c.get("/health", headers=good).status_code == 200
        wrong = {"Authorization": "Basic " + base64.b64encode(b"u:x").decode()}
        assert c.get("/health", headers=wrong).status_code == 401
        assert c.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}}).status_code == 200


def test_oversized_body_is_refused(client):
    r = client.post("/predict", content=b"x", headers={"content-length": str(200 * 1024 * 1024),
                                                        "content-type": "application/json"})
    assert r.status_code == 413


def test_labels_of_a_killed_training_run_are_trained_after_restart(client, backend, trainer):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", json=annotation_event(900 + n, t, "car-like" if label == "vehicle" else label))
    with backend.store.session() as s:  # a process died mid-training: its run row still says "running"
        repo.start_training_run(s, project=repo.get_project(s, name="ls-7"), trigger="backend")
    later = datetime.now(timezone.utc) + timedelta(seconds=10)
    assert trainer.train_due_projects(now=later) == ["v1"]
    with backend.store.session() as s:
        statuses = sorted(r.status for r in s.query(repo.TrainingRun).all())
    assert statuses == ["interrupted", "succeeded"]


def test_repeated_events_and_resyncs_do_not_retrigger_training(client, backend, trainer):
    pairs = tasks_for_all()
    for n, (t, label) in enumerate(pairs):
        client.post("/webhook", json=annotation_event(300 + n, t, "car-like" if label == "vehicle" else label))
    later = datetime.now(timezone.utc) + timedelta(seconds=10)
    assert trainer.train_due_projects(now=later) == ["v1"]
    for n, (t, label) in enumerate(pairs):  # the same annotations again (a resync, a retried webhook)
        client.post("/webhook", json=annotation_event(300 + n, t, "car-like" if label == "vehicle" else label))
    # each check's clock is past the quiet period of the events just sent, however long training took
    assert trainer.train_due_projects(now=datetime.now(timezone.utc) + timedelta(seconds=10)) == []
    t, _ = pairs[0]  # a real correction does count
    client.post("/webhook", json=annotation_event(300, t, "food", action="ANNOTATION_UPDATED"))
    assert trainer.train_due_projects(now=datetime.now(timezone.utc) + timedelta(seconds=10)) == ["v2"]


def test_concurrent_webhooks_on_a_new_project_lose_no_label(backend):
    """Label Studio posts each annotation on its own connection and never retries a failed one: the
    first events of a new project arrive together, and each must create the project, its task and
    its label without tripping over the others (the loser of an insert race retries)."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = tasks_for_all()
    events = [annotation_event(2000 + n, t, "car-like" if label == "vehicle" else label)
              for n, (t, label) in enumerate(pairs)]
    events += [dict(ev, action="ANNOTATION_UPDATED") for ev in events[:8]]  # the same annotations, at the same time
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(backend.webhook, events))
    assert all(a["status"] == "ok" and a["recorded"] == 1 for a in answers)
    with backend.store.session() as s:
        project = repo.get_project(s, name="ls-7")
        assert len(repo.list_items(s, project=project)) == len(pairs)
        assert len(repo.current_labels(s, project=project)) == len(pairs)


def test_a_webhook_is_not_blocked_while_predict_encodes(backend, monkeypatch):
    """/predict commits its writes before encoding: a webhook that arrives meanwhile is stored at once
    instead of waiting for SQLite's write lock (Label Studio drops a webhook that fails)."""
    import threading

    pairs = tasks_for_all()
    image_encoder = backend.runtime.encoders.get("image")
    encode, answered = image_encoder.encode, []

    def encode_while_a_webhook_arrives(inputs):
        if not answered:
            hook = threading.Thread(target=lambda: answered.append(backend.webhook(annotation_event(4000, pairs[-1][0], "food"))))
            hook.start()
            hook.join(timeout=15)  # the store's busy timeout is 30 s: a held lock would leave this unanswered
            assert answered, "the webhook waited for /predict to finish encoding"
        return encode(inputs)

    monkeypatch.setattr(image_encoder, "encode", encode_while_a_webhook_arrives)
    backend.predict(tasks=[t for t, _ in pairs[:4]], project=7, label_config=CONFIG)
    assert answered == [{"status": "ok", "action": "ANNOTATION_CREATED", "recorded": 1}]


def test_predict_answers_within_its_budget_and_finishes_the_rest_in_the_background(settings, encoders, tmp_path):
    """A large /predict answers once its budget is spent: what is encoded by then is predicted, the rest
    is marked pending and encoded in the background, so asking again answers every task."""
    import time

    from PIL import Image

    rng = np.random.default_rng(0)
    tasks = []
    for i in range(300):  # distinct images: nothing comes from the embedding cache
        path = tmp_path / f"noise-{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        tasks.append({"id": i + 1, "data": {"text": f"photo {i} of a {['dog', 'bus', 'pizza'][i % 3]}", "image": str(path)}})
    hurried = settings.model_copy(update={"predict_budget_s": 0.2})
    store = open_store(hurried)
    backend = Backend(hurried, store=store, runtime=Runtime(hurried, encoders=encoders))
    first = backend.predict(tasks=tasks, project=7, label_config=CONFIG)["results"]
    assert len(first) == len(tasks)
    pending = [r for r in first if r["model_version"] == "zero-shot-pending"]
    assert pending and all(r["result"] == [] for r in pending)  # answered before encoding could finish
    assert all(r["result"] for r in first if r["model_version"] == "zero-shot")

    deadline = time.time() + 300
    while time.time() < deadline:  # the background job commits each chunk's content hashes
        with store.session() as s:
            items = repo.list_items(s, project=repo.get_project(s, name="ls-7"))
            if all(it.image_sha for it in items):
                break
        time.sleep(0.5)
    again = backend.predict(tasks=tasks, project=7, label_config=CONFIG)["results"]
    assert all(r["model_version"] == "zero-shot" and r["result"] for r in again)
    assert encoders.get("image").inputs == len(tasks)  # each image encoded once, by the background job
    backend.close()
    store.close()


def test_hostile_headers_ids_and_bodies_get_4xx_not_500(settings, backend):
    """Probes from #15 that answered 500: a non-ASCII Authorization header, a webhook project id
    that is not a number, /train with a body that is not JSON, payloads of the wrong shape."""
    from pydantic import SecretStr

    secured = settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": SecretStr("p")})
    with TestClient(create_app(secured, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        assert c.get("/health", headers={"Authorization": b"Basic \xe9\xe8"}).status_code == 401
    with TestClient(create_app(settings, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        r = c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": "abc"}})
        assert r.status_code == 400 and "project id from 'abc'" in r.json()["detail"]
        r = c.post("/train", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not JSON" in r.json()["detail"]
        assert c.post("/train", json=[1, 2]).status_code == 400
        for bad in ({"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": "x"}]},
                    {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": CONFIG},
                     "annotation": {"id": 1, "task": "seven"}, "task": {"id": 7, "data": {"text": "t"}}},
                    {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": 5}}):
            r = c.post("/webhook", json=bad)
            assert r.status_code == 400, (bad, r.text)


def test_a_decompression_bomb_fails_its_task_only(backend, tmp_path):
    from PIL import Image

    bombs = []
    for w, h in ((8000, 6000), (14000, 14000)):  # over our 40 MP limit; over PIL's own (2 × 89 MP)
        path = tmp_path / f"bomb-{w}.png"
        Image.new("1", (w, h)).save(path)  # a few KB on disk
        bombs.append(str(path))
    tasks = [task(1, "a photo of a dog"), task(2, "a red bus", image=bombs[0]), task(3, "pizza", image=bombs[1])]
    results = backend.predict(tasks=tasks, project=7, label_config=CONFIG)["results"]
    assert len(results) == 3 and all(r["result"] for r in results)  # the text still answers for 2 and 3
    with backend.store.session() as s:
        items = {it.external_id: it for it in repo.list_items(s, project=repo.get_project(s, name="ls-7"))}
    assert items["1"].image_sha and not items["2"].image_sha and not items["3"].image_sha


def test_a_training_request_survives_a_killed_training(client, backend, trainer, monkeypatch):
    """START_TRAINING is marked handled when its run ends, not when it starts: a process killed
    mid-training leaves it pending, and the next trainer honours it."""
    import annotator.trainer

    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", json=annotation_event(1200 + n, t, "car-like" if label == "vehicle" else label))
    assert trainer.train_due_projects(now=datetime.now(timezone.utc) + timedelta(seconds=10)) == ["v1"]
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process ends in the middle of training (kill -9, OOM, a deploy)

    monkeypatch.setattr(annotator.trainer, "retrain", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_due_projects()
    with backend.store.session() as s:
        assert repo.has_training_request(s, project=repo.get_project(s, name="ls-7"))
    monkeypatch.undo()
    assert trainer.train_due_projects() == ["v2"]  # no new label: only the surviving request asks for it
    with backend.store.session() as s:
        assert not repo.has_training_request(s, project=repo.get_project(s, name="ls-7"))

"""Every route of the ML backend protocol, through FastAPI's TestClient, with real models and SQLite."""

import base64
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pydantic import SecretStr
from fastapi.testclient import TestClient

from annotator.backend import Backend
from annotator.runtime import Runtime
from annotator.store import open_store
from annotator.trainer import Trainer
from annotator.training import retrain
from annotator.store import repo
from annotator.store.models import TrainingRun
from sqlalchemy import select
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


SECRET_VALUE = "test-webhook-secret"
SECRET = {"X-Annotator-Secret": SECRET_VALUE}  # what `ls connect` makes Label Studio's webhook send


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_secret": SecretStr(SECRET_VALUE)})


@pytest.fixture
def backend(settings, encoders):
    store = open_store(settings)
    yield Backend(settings, store=store, runtime=Runtime(settings, encoders=encoders))
    store.close()


@pytest.fixture
def trainer(settings, backend):
    """The trainer, driven by hand (no thread, no background search), on the backend's store and runtime."""
    return Trainer(settings, store=backend.store, runtime=backend.runtime, debounce_s=5, debounce_labels=1000,
                   background_search=False)


@pytest.fixture
def client(settings, backend):
    with TestClient(create_app(settings, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        yield c


def test_health_and_setup(client):
    health = client.get("/health").json()
    assert (health["status"], health["database"], health["loaded_versions"]) == ("UP", "ok", {})
    assert {m: e["runtime"] for m, e in health["encoders"].items()} == {  # ONNX Runtime on a CPU by default
        "text": "onnx", "image": "onnx", "audio": "ctranslate2-int8"}
    assert client.get("/").status_code == 200
    body = {"project": "7.1717000000", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "t"}
    assert client.post("/setup", json=body).json() == {"model_version": "zero-shot", "predicted": ["kind"]}
    assert client.post("/setup", json=body).json() == {"model_version": "zero-shot", "predicted": ["kind"]}  # idempotent


def test_setup_names_the_controls_that_get_no_predictions(client, caplog):
    """Every <Choices> and <Taxonomy> is predicted; a <Labels> is not, and a config with neither gets
    nothing: /setup says so, and so does the log, where the person wiring the backend looks."""
    import logging

    two = CONFIG.replace("</View>", '<Choices name="mood" toName="caption"><Choice value="calm"/></Choices>'
                                    '<Labels name="ner" toName="caption"><Label value="PER"/></Labels></View>')
    with caplog.at_level(logging.WARNING, logger="annotator.backend"):
        answer = client.post("/setup", json={"project": "8.1", "schema": two}).json()
    assert answer == {"model_version": "zero-shot", "predicted": ["kind", "mood"], "not_predicted": ["ner (Labels)"]}
    assert "project 8: predicting kind (Choices), mood (Choices); not predicted: ner (Labels)" in caplog.text
    none = """<View><Text name="caption" value="$text"/><Labels name="ner" toName="caption"><Label value="PER"/></Labels>
              <TextArea name="notes" toName="caption"/></View>"""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="annotator.backend"):
        answer = client.post("/setup", json={"project": "9.1", "schema": none}).json()
    assert answer["predicted"] == [] and answer["not_predicted"] == ["ner (Labels)", "notes (TextArea)"]
    assert "nothing in this label config is predicted" in caplog.text
    predictions = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "Ada"}}], "project": "9.1",
                                                "label_config": none}).json()["results"]
    assert len(predictions) == 1 and predictions[0]["result"] == []


THREE = CONFIG.replace("</View>", """<Choices name="mood" toName="caption"><Choice value="calm"/><Choice value="busy"/></Choices>
<Taxonomy name="topic" toName="caption"><Choice value="Living"><Choice value="Pet"/><Choice value="Wild"/></Choice>
<Choice value="Object"/></Taxonomy></View>""")
MOOD = {"animal": "calm", "food": "calm", "vehicle": "busy"}


def _topic(label: str, word: str) -> list[str]:
    return ["Object"] if label != "animal" else ["Living", "Pet" if word in ("dog", "cat") else "Wild"]


def test_every_choices_and_taxonomy_control_gets_its_own_model_and_region(client, backend, trainer):
    """Two <Choices> and a <Taxonomy>: each answer is stored under its control, one retrain trains
    a model per control, and a prediction carries one region per control under one version that
    names them all; deleting the annotation removes all three answers."""
    pairs = []
    for i, (t, label) in enumerate(tasks_for_all()):
        word = t["data"]["text"].rsplit(" ", 1)[1]
        t = {**t, "project": 11}
        result = [{"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": [label]}},
                  {"from_name": "mood", "to_name": "caption", "type": "choices", "value": {"choices": [MOOD[label]]}},
                  {"from_name": "topic", "to_name": "caption", "type": "taxonomy",
                   "value": {"taxonomy": [_topic(label, word)]}}]
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 11, "label_config": THREE}, "task": t,
                 "annotation": {"id": 500 + i, "task": t["id"], "completed_by": 1, "result": result}}
        assert client.post("/webhook", headers=SECRET, json=event).json()["recorded"] == 1
        pairs.append((t, label, word))
    with backend.store.session() as s:
        p = repo.get_project(s, name="ls-11")
        assert repo.label_controls(s, project=p) == ["mood", "topic"]
        topics = repo.current_labels(s, project=p, control="topic")
        assert sorted({v[0] for v in topics.values()}) == ["Living / Pet", "Living / Wild", "Object"]
        assert len(repo.current_labels(s, project=p)) == len(pairs)
    assert client.post("/setup", json={"project": "11.1", "schema": THREE}).json()["predicted"] == ["kind", "mood", "topic"]

    client.post("/webhook", headers=SECRET, json={"action": "START_TRAINING", "project": {"id": 11, "label_config": THREE}})
    assert trainer.train_due_projects() == ["v1"]
    assert set(client.get("/versions").json()["versions"]) == {"v1", "mood.v1", "topic.v1"}
    assert client.post("/setup", json={"project": "11.1", "schema": THREE}).json()["model_version"] == "v1+mood.v1+topic.v1"
    bus = next(t for t, _, word in pairs if word == "bus")
    dog = next(t for t, _, word in pairs if word == "dog")
    results = client.post("/predict", json={"tasks": [bus, dog], "project": "11.1", "label_config": THREE}).json()["results"]
    assert [r["model_version"] for r in results] == ["v1+mood.v1+topic.v1"] * 2
    regions = [{r["from_name"]: r for r in res["result"]} for res in results]
    assert regions[0]["kind"]["value"] == {"choices": ["car-like"]} and regions[0]["mood"]["value"] == {"choices": ["busy"]}
    assert regions[0]["topic"]["type"] == "taxonomy" and regions[0]["topic"]["value"] == {"taxonomy": [["Object"]]}
    assert regions[1]["mood"]["value"] == {"choices": ["calm"]} and regions[1]["topic"]["value"] == {"taxonomy": [["Living", "Pet"]]}
    assert all(res["score"] == min(r["score"] for r in res["result"]) for res in results)
    assert set(backend.runtime.loaded_versions()) == {"ls-11", "ls-11:mood", "ls-11:topic"}

    gone = client.post("/webhook", headers=SECRET, json={"action": "ANNOTATION_DELETED", "annotation": {"id": 500},
                                                         "project": {"id": 11}}).json()
    assert gone["deleted"] == 3


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
        assert client.post("/webhook", headers=SECRET, json=ev).json() == {"status": "ok", "action": "ANNOTATION_CREATED", "recorded": 1}
    client.post("/webhook", headers=SECRET, json=annotation_event(100, pairs[0][0], "animal"))  # a repeat: no second label
    skip = annotation_event(999, pairs[1][0], None, cancelled=True)
    assert client.post("/webhook", headers=SECRET, json=skip).json()["recorded"] == 0
    with backend.store.session() as s:
        p = repo.get_project(s, name="ls-7")
        labels = repo.current_labels(s, project=p)
        assert len(labels) == len(pairs)
        assert sorted({v[0] for v in labels.values()}) == ["animal", "food", "vehicle"]
    gone = client.post("/webhook", headers=SECRET, json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 101}],
                                         "project": {"id": 7}}).json()
    assert gone["deleted"] == 1
    assert client.post("/webhook", headers=SECRET, json={"action": "PROJECT_UPDATED", "project": {"id": 7}}).json()["status"] == "ignored"

    assert trainer.train_due_projects() == []  # labels are fresh: debounce holds
    assert client.post("/webhook", headers=SECRET, json={"action": "START_TRAINING", "project": {"id": 7, "label_config": CONFIG}}).json() == \
        {"status": "ok", "action": "START_TRAINING", "training": "requested"}
    assert trainer.train_due_projects() == ["v1"]
    assert trainer.train_due_projects() == []  # nothing new since
    trainer.wait()  # the refit is served at once and scored in the background
    assert client.post("/setup", json={"project": "7.1", "schema": CONFIG}).json()["model_version"] == "v1"
    results = client.post("/predict", json={"tasks": [pairs[0][0]], "project": "7.1", "label_config": CONFIG}).json()["results"]
    assert results[0]["model_version"] == "v1" and results[0]["result"][0]["value"]["choices"] == ["animal"]
    versions = client.get("/versions").json()
    assert versions["versions"] == ["v1"]
    assert versions["stopping"]["ls-7"]["version"] == "v1" and versions["stopping"]["ls-7"]["signal"] in ("stop", "keep going")


def test_the_first_refit_serves_the_baseline_and_the_search_follows_in_the_background(client, backend, settings):
    trainer = Trainer(settings, store=backend.store, runtime=backend.runtime, debounce_s=5, debounce_labels=1000)
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(300 + n, t, "car-like" if label == "vehicle" else label))
    client.post("/webhook", headers=SECRET, json={"action": "START_TRAINING", "project": {"id": 7}})
    assert trainer.train_due_projects() == ["v1"]  # a refit of the plain baseline: it serves at once
    served = client.post("/predict", json={"tasks": [tasks_for_all()[0][0]], "project": "7.1", "label_config": CONFIG})
    assert served.json()["results"][0]["model_version"] == "v1"
    trainer.close()  # waits for the background search the refit started
    assert not trainer.searching("ls-7")
    with backend.store.session() as s:
        versions = repo.list_model_versions(s, project=repo.get_project(s, name="ls-7"))
        v1, v2 = versions
        assert (v1.head, v1.metrics["training"], v1.metrics["search_due"]) == ("logreg", "refit", "no model search yet")
        assert v2.metrics["training"] == "search" and len(v2.metrics["candidates"]) > 3
        promoted = v2.status == "active"
        assert repo.has_training_request(s, project=repo.get_project(s, name="ls-7")) == promoted
    if promoted:  # the search's choice is refitted with any label that came meanwhile, and refits follow it
        assert trainer.train_due_projects() == ["v3"]
        with backend.store.session() as s:
            assert repo.active_model_version(s, project=repo.get_project(s, name="ls-7")).head == v2.head


def test_quiet_period_debounce_trains_once_after_a_storm(client, backend, trainer):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(500 + n, t, "car-like" if label == "vehicle" else label))
    now = datetime.now(timezone.utc)
    assert trainer.train_due_projects(now=now + timedelta(seconds=1)) == []
    assert trainer.train_due_projects(now=now + timedelta(seconds=10)) == ["v1"]
    assert trainer.train_due_projects(now=now + timedelta(seconds=20)) == []


def test_a_second_process_picks_up_a_promoted_version(client, trainer, settings, encoders):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(700 + n, t, "car-like" if label == "vehicle" else label))
    other = Backend(settings, store=open_store(settings), runtime=Runtime(settings, encoders=encoders))
    first = other.predict(tasks=[tasks_for_all()[0][0]], project="7.1", label_config=CONFIG)["results"][0]
    assert first["model_version"] == "zero-shot"
    client.post("/webhook", headers=SECRET, json={"action": "START_TRAINING", "project": {"id": 7}})
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
        # the webhook needs no basic auth (Label Studio's event webhook sends none): its secret counts
        assert c.post("/webhook", headers=SECRET, json={"action": "PROJECT_UPDATED", "project": {"id": 7}}).status_code == 200


def test_oversized_body_is_refused(client):
    r = client.post("/predict", content=b"x", headers={"content-length": str(200 * 1024 * 1024),
                                                        "content-type": "application/json"})
    assert r.status_code == 413


def test_labels_of_a_killed_training_run_are_trained_after_restart(client, backend, trainer):
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(900 + n, t, "car-like" if label == "vehicle" else label))
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
        client.post("/webhook", headers=SECRET, json=annotation_event(300 + n, t, "car-like" if label == "vehicle" else label))
    later = datetime.now(timezone.utc) + timedelta(seconds=10)
    assert trainer.train_due_projects(now=later) == ["v1"]
    for n, (t, label) in enumerate(pairs):  # the same annotations again (a resync, a retried webhook)
        client.post("/webhook", headers=SECRET, json=annotation_event(300 + n, t, "car-like" if label == "vehicle" else label))
    # each check's clock is past the quiet period of the events just sent, however long training took
    assert trainer.train_due_projects(now=datetime.now(timezone.utc) + timedelta(seconds=10)) == []
    t, _ = pairs[0]  # a real correction does count
    client.post("/webhook", headers=SECRET, json=annotation_event(300, t, "food", action="ANNOTATION_UPDATED"))
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
        answers = list(pool.map(lambda ev: backend.webhook(ev, secret=SECRET_VALUE), events))
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
    encode, answered = image_encoder.encode_prepared, []  # what the pipelined embedding calls

    def encode_while_a_webhook_arrives(inputs):
        if not answered:
            hook = threading.Thread(target=lambda: answered.append(backend.webhook(annotation_event(4000, pairs[-1][0], "food"), secret=SECRET_VALUE)))
            hook.start()
            hook.join(timeout=15)  # the store's busy timeout is 30 s: a held lock would leave this unanswered
            assert answered, "the webhook waited for /predict to finish encoding"
        return encode(inputs)

    monkeypatch.setattr(image_encoder, "encode_prepared", encode_while_a_webhook_arrives)
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
            r = c.post("/webhook", headers=SECRET, json=bad)
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
    import annotator.backend
    import annotator.trainer

    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(1200 + n, t, "car-like" if label == "vehicle" else label))
    assert trainer.train_due_projects(now=datetime.now(timezone.utc) + timedelta(seconds=10)) == ["v1"]
    monkeypatch.setattr(annotator.backend, "TRAIN_REQUEST_COOLDOWN_S", 0.0)  # a request right after v1 counts
    client.post("/webhook", headers=SECRET, json={"action": "START_TRAINING", "project": {"id": 7}})

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


def test_start_training_clicked_eight_times_trains_once(client, backend, trainer):
    """#15: 8 × START_TRAINING in 32 s made 4 extra full retrains. A request while one is pending is
    the same request; one with no label changed since a training that just started is dropped."""
    for n, (t, label) in enumerate(tasks_for_all()):
        client.post("/webhook", headers=SECRET, json=annotation_event(1500 + n, t, "car-like" if label == "vehicle" else label))
    start = {"action": "START_TRAINING", "project": {"id": 7}}
    answers = [client.post("/webhook", headers=SECRET, json=start).json()["training"] for _ in range(8)]
    assert answers == ["requested"] + ["already requested"] * 7
    assert trainer.train_due_projects() == ["v1"]
    answers = [client.post("/webhook", json=start).json()["training"] for _ in range(8)]  # unauthenticated too
    assert set(answers) == {"coalesced: no label changed since the last training"}
    assert trainer.train_due_projects() == []
    with backend.store.session() as s:
        runs = s.scalars(select(TrainingRun.status).where(TrainingRun.status.in_(["succeeded", "running"]))).all()
    assert runs == ["succeeded"]


def _state(store) -> tuple:
    """Everything an event could change: projects and their configs, items and their data, live labels,
    training requests."""
    from annotator.store.models import Item, Label, Project

    with store.session() as s:
        return (sorted((p.name, p.label_config, str(p.classes)) for p in s.scalars(select(Project))),
                sorted((i.external_id, str(i.data)) for i in s.scalars(select(Item))),
                sorted((lb.annotation_key, str(lb.values)) for lb in s.scalars(select(Label).where(Label.deleted_at.is_(None)))),
                len(s.scalars(select(TrainingRun)).all()))


def test_unauthenticated_webhooks_store_nothing(client, backend):
    """The probes of #15, without the secret: relabelling a task and swapping its image URL, deleting
    annotations and tasks, creating projects, rewriting a label config. None changes anything."""
    pairs = tasks_for_all()[:6]
    for n, (t, label) in enumerate(pairs):
        client.post("/webhook", headers=SECRET, json=annotation_event(2000 + n, t, label))
    before = _state(backend.store)
    assert len(before[2]) == 6

    forged = annotation_event(2000, {**pairs[0][0], "data": {"text": "x", "image": "http://attacker.example/x.png"}}, "food")
    attacks = [
        forged,
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2000 + n} for n in range(6)], "project": {"id": 7}},
        {"action": "TASKS_DELETED", "tasks": [{"id": t["id"]} for t, _ in pairs], "project": {"id": 7}},
        {"action": "PROJECT_UPDATED", "project": {"id": 7, "label_config": CONFIG.replace("food", "poison")}},
    ]
    # project 7 was registered without a way to reach Label Studio: nothing to check the events against
    for event in attacks:
        r = client.post("/webhook", json=event)
        assert r.status_code == 403 and "unauthenticated" in r.json()["detail"], r.text
        r = client.post("/webhook", json=event, headers={"X-Annotator-Secret": "guess"})
        assert r.status_code == 401
    # 500 events naming 500 new projects: refused, none created
    for pid in range(1000, 1500):
        r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": pid, "label_config": CONFIG},
                                          "task": {"id": 1, "data": {"text": "t"}}, "annotation": {"id": 1, "task": 1}})
        assert r.status_code == 403
    assert _state(backend.store) == before

    # with Label Studio's address and token stored (by /setup), an event is a reason to pull the project
    # from Label Studio, and still stores nothing of its own; an unauthenticated /setup's address is
    # used only where the operator allows it (#33)
    served = client.app.state.backend
    served.settings = served.settings.model_copy(update={"media_allow_hosts": "ls.invalid"})
    client.post("/setup", json={"project": "7", "schema": CONFIG, "hostname": "http://ls.invalid:8080",
                                "access_token": "token"})
    for event in attacks:
        r = client.post("/webhook", json=event)
        assert r.status_code == 202 and r.json()["sync"] == "requested"
    with backend.store.session() as s:
        assert repo.get_project(s, name="ls-7").sync_requested_at is not None
        assert [p.name for p in repo.projects_to_sync(s)] == ["ls-7"]
    assert _state(backend.store)[1:] == before[1:]


def test_fuzzed_bodies_get_no_5xx_and_unauthenticated_ones_change_nothing(settings, backend):
    """A bounded random generator of webhook and /predict bodies (3,000 cases, fixed seed): shapes
    Label Studio sends, with values swapped for wrong types, huge numbers, deep nesting and junk."""
    import random

    rng = random.Random(15)
    junk = [None, True, -1, 2**70, 1e308, "", "abc", "7.12", "\u0000", "é" * 50, [], {}, [1, [2, [3]]],
            {"id": {"id": 1}}, "../../etc/passwd", "http://127.0.0.1:1/x.png", CONFIG, "<View>"]

    def value(depth=0):
        if depth < 3 and rng.random() < 0.3:
            return {k: value(depth + 1) for k in rng.sample(["id", "data", "task", "result", "annotations", "tasks",
                                                              "label_config", "project", "image", "text"], 3)}
        if depth < 3 and rng.random() < 0.15:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice(junk)

    def event():
        body = {"action": rng.choice(["ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "TASKS_DELETED", "START_TRAINING",
                                      "PROJECT_UPDATED", "ANNOTATIONS_CREATED", value()]),
                "project": rng.choice([{"id": 7, "label_config": CONFIG}, {"id": value()}, value()])}
        for key in rng.sample(["annotation", "annotations", "task", "tasks"], rng.randint(0, 3)):
            body[key] = value()
        return body

    def predict():
        tasks = [rng.choice([{"id": rng.randint(1, 5), "data": {"text": value(), "image": value()}}, value()])
                 for _ in range(rng.randint(0, 3))]
        return rng.choice([{"tasks": tasks, "project": rng.choice(["7.1", value()]), "label_config": CONFIG},
                           {"tasks": value()}, value()])

    secured = settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": SecretStr("p")})
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    with TestClient(create_app(secured, store=backend.store, runtime=backend.runtime, start_trainer=False),
                    raise_server_exceptions=False) as c:
        c.post("/setup", headers=auth, json={"project": "7", "schema": CONFIG})
        for n, (t, label) in enumerate(tasks_for_all()[:4]):
            c.post("/webhook", headers=SECRET, json=annotation_event(3000 + n, t, label))
        before = _state(backend.store)
        for _ in range(1500):
            r = c.post("/webhook", json=event())
            assert r.status_code < 500, r.text
        assert _state(backend.store) == before  # no state change without the secret
        for _ in range(750):
            body = event()
            r = c.post("/webhook", headers=SECRET, json=body)
            assert r.status_code < 500, body
        for _ in range(750):
            body = predict()
            r = c.post("/predict", headers=auth, json=body)
            assert r.status_code < 500, body


def test_predict_and_search_fetch_nothing_internal(client, backend):
    """#15: /predict tasks (and the trainer after a webhook) fetched loopback and metadata URLs and read
    local files; /search told a port's status. A loopback recorder stands in for an internal service."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write((DATA / "cat.png").read_bytes())

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    internal = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        refs = [f"{internal}/admin.png", "http://169.254.169.254/latest/meta-data/iam", "file:///etc/passwd",
                "/proc/self/environ", "/etc/hostname"]
        tasks = [task(100 + i, "a photo of a cat", image=ref) for i, ref in enumerate(refs)]
        tasks.append(task(200, "a photo of a cat"))  # a file inside the media roots: read
        results = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": CONFIG}).json()["results"]
        assert len(results) == 6 and results[-1]["result"]
        with backend.store.session() as s:
            items = repo.items_by_task_ids(s, project=repo.get_project(s, name="ls-7"), task_ids=[100 + i for i in range(5)])
            assert all(it.image_sha is None for it in items.values())  # nothing was read for them
        for ref in (f"{internal}/probe", "/etc/passwd"):
            r = client.post("/search", json={"project": 7, "image": ref})
            assert r.status_code == 422 and "not allowed" in r.json()["detail"] and "HTTP" not in r.json()["detail"]
    finally:
        httpd.shutdown()
    assert hits == []


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(settings, backend, monkeypatch):
    """#15: a 70 MB chunked body to /webhook was read whole (only Content-Length was checked)."""
    import annotator.backends.app as app_module

    monkeypatch.setattr(app_module, "MAX_BODY_BYTES", 1024 * 1024)
    sent = []

    def chunks(n_bytes):
        for _ in range(n_bytes // 65536):
            sent.append(65536)
            yield b" " * 65536

    with TestClient(create_app(settings, store=backend.store, runtime=backend.runtime, start_trainer=False)) as c:
        for path in ("/webhook", "/predict", "/setup"):
            r = c.post(path, content=chunks(3 * 1024 * 1024), headers={"content-type": "application/json"})
            assert "content-length" not in {k.lower() for k in r.request.headers} and r.status_code == 413, (path, r.text)
            assert "over 1048576 bytes" in r.json()["detail"]
        small = b'{"action": "PROJECT_UPDATED", "project": {"id": 7}}'
        r = c.post("/webhook", content=iter([small[:10], small[10:]]), headers={**SECRET, "content-type": "application/json"})
        assert r.status_code == 200  # a chunked body under the limit is read as usual


AUDIO_TEXTAREA = """<View><Audio name="audio" value="$audio"/><TextArea name="transcript" toName="audio"/>
<Choices name="topic" toName="audio"><Choice value="cat"/><Choice value="coffee"/></Choices></View>"""


def test_an_audio_project_gets_transcripts_in_its_textarea_and_as_its_text(client, backend, monkeypatch):
    """A <TextArea> on audio is pre-filled with the Whisper transcript; with no text object the
    transcript is also the item's text, so zero-shot reads what was said. Transcripts are made once."""
    tasks = [{"id": 1, "data": {"audio": str(DATA / "cat_speech.wav")}},
             {"id": 2, "data": {"audio": str(DATA / "coffee_speech.wav")}},
             {"id": 3, "data": {"audio": str(DATA / "tone.wav")}},
             {"id": 4, "data": {"audio": str(DATA / "truncated.png")}}]
    assert client.post("/setup", json={"project": "12.1", "schema": AUDIO_TEXTAREA}).json()["predicted"] == \
        ["topic", "transcript"]
    results = client.post("/predict", json={"tasks": tasks, "project": "12.1",
                                            "label_config": AUDIO_TEXTAREA}).json()["results"]
    regions = [{r["from_name"]: r for r in res["result"]} for res in results]
    said = [r.get("transcript", {}).get("value", {}).get("text", [""])[0].lower() for r in regions]
    assert "sofa" in said[0] and "coffee" in said[1]
    assert regions[0]["transcript"]["type"] == "textarea" and regions[0]["transcript"]["to_name"] == "audio"
    assert "transcript" not in regions[2] and regions[3] == {}  # a tone says nothing; a broken file fails alone
    assert regions[0]["topic"]["value"] == {"choices": ["cat"]} and regions[1]["topic"]["value"] == {"choices": ["coffee"]}
    with backend.store.session() as s:
        items = repo.items_by_task_ids(s, project=repo.get_project(s, name="ls-12"), task_ids=[1, 3])
        assert "sofa" in items[1].data["text"].lower() and items[1].data["transcript_of"] == tasks[0]["data"]["audio"]
        assert items[1].text_sha and "text" not in items[3].data

    transcriber = backend.runtime.encoders.transcriber()
    monkeypatch.setattr(transcriber, "transcribe", lambda clips: pytest.fail("transcribed twice"))
    again = client.post("/predict", json={"tasks": tasks[:2], "project": "12.1",
                                          "label_config": AUDIO_TEXTAREA}).json()["results"]
    assert [{r["from_name"]: r for r in res["result"]}["transcript"]["value"] for res in again] == \
        [regions[0]["transcript"]["value"], regions[1]["transcript"]["value"]]


EXPLAINED = CONFIG.replace("</View>", '<TextArea name="why" toName="caption"/></View>')


def test_a_textarea_named_in_the_settings_gets_a_short_explanation(settings, encoders):
    on = settings.model_copy(update={"explanation_textarea": "why"})
    store = open_store(on)
    try:
        backend = Backend(on, store=store, runtime=Runtime(on, encoders=encoders))
        with TestClient(create_app(on, store=store, runtime=backend.runtime, start_trainer=False)) as c:
            answer = c.post("/setup", json={"project": "7.1", "schema": EXPLAINED}).json()
            assert answer["predicted"] == ["kind", "why"] and "not_predicted" not in answer
            for n, (t, label) in enumerate(tasks_for_all()):
                event = annotation_event(100 + n, t, "car-like" if label == "vehicle" else label)
                event["project"]["label_config"] = EXPLAINED
                c.post("/webhook", headers=SECRET, json=event)
            retrain(store, on, project_name="ls-7", head="logreg", encoders=encoders, progress=False)
            [result] = c.post("/predict", json={"tasks": [task(1, "a photo of a dog")], "project": "7.1",
                                                "label_config": EXPLAINED}).json()["results"]
    finally:
        store.close()
    regions = {r["from_name"]: r for r in result["result"]}
    assert regions["kind"]["value"] == {"choices": ["animal"]}
    why = regions["why"]
    assert (why["type"], why["to_name"]) == ("textarea", "caption")
    [line] = why["value"]["text"]
    score = round(100 * regions["kind"]["score"])
    assert line.startswith(f"kind: animal ({score}%), from ") and "text " in line and "image " in line

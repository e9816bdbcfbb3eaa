"""The whole loop against a real Label Studio 1.23.2: connect, predict, annotate, webhook, retrain,
new version, sync, bulk upload. Plus a text-only and an audio project."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest

from annotator.sample_data import SAMPLE_DIR
from annotator.labelstudio.sync import connect, sync
from annotator.labelstudio.tasks import project_name_for
from annotator.store import repo
from tests.conftest import DATA

pytestmark = pytest.mark.integration

MM_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="caption" value="$text"/>
  <Choices name="category" toName="image" choice="single">
    <Choice value="animal"/><Choice value="food"/><Choice value="plant"/><Choice value="transport"/>
  </Choices>
</View>"""


def upload(label_studio, ls_client, files: list[tuple[str, bytes, str]], key: str, config: str) -> tuple[int, list[dict]]:
    """Upload media into a single-data-key project (Label Studio refuses direct upload with two keys)."""
    project = ls_client.projects.create(title=f"uploads-{key}-{time.time()}", label_config=config)
    r = httpx.post(f"{label_studio.url}/api/projects/{project.id}/import",
                   headers={"Authorization": f"Token {label_studio.token}"},
                   # one form field per file: Label Studio reads request.FILES as a dict
                   files=[(f"file{i}", (name, data, mime)) for i, (name, data, mime) in enumerate(files)], timeout=60)
    assert r.status_code == 201, r.text
    tasks = [t if isinstance(t, dict) else t.model_dump() for t in ls_client.tasks.list(project=project.id, fields="all")]
    return project.id, tasks


def wait_for(predicate, timeout_s=90, what="condition"):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def human_labels(backend_server, ls_project_id):
    with backend_server.store.session() as s:
        p = repo.get_project(s, name=project_name_for(ls_project_id))
        return repo.current_labels(s, project=p)


def _sync_pending(backend_server, ls_project_id):
    with backend_server.store.session() as s:
        return repo.get_project(s, name=project_name_for(ls_project_id)).sync_requested_at is not None


def active_version(backend_server, ls_project_id):
    with backend_server.store.session() as s:
        mv = repo.active_model_version(s, project=repo.get_project(s, name=project_name_for(ls_project_id)))
        return mv.version if mv else None


def settled_version(backend_server, ls_project_id):
    """The active version once the trainer has nothing left to do for the project (no training
    request or pending label, no run in progress), else None. A debounced training and Label
    Studio's training request can each train (v1, then v2), depending on how they fall in time."""
    from annotator.store.models import TrainingRun
    from sqlalchemy import select

    with backend_server.store.session() as s:
        p = repo.get_project(s, name=project_name_for(ls_project_id))
        running = s.scalars(select(TrainingRun).where(TrainingRun.project_id == p.id,
                                                      TrainingRun.status == "running")).first()
        if running is not None or repo.has_training_request(s, project=p) or repo.pending_labels(s, project=p)[0]:
            return None
        mv = repo.active_model_version(s, project=p)
        return mv.version if mv else None


def predictions_of(ls_client, project_id):
    return [p if isinstance(p, dict) else p.model_dump() for p in ls_client.predictions.list(project=project_id)]


def retrieve_predictions(ls_client, project_id):
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                             selected_items={"all": True, "excluded": []})


def category(item_id: str) -> str:
    """A sample item's category: the Unicode block of its emoji, as in the sample set."""
    from bench.datasets import CATEGORY_RANGES

    cp = int(item_id, 16)
    return next(c for c, ranges in CATEGORY_RANGES.items() if any(lo <= cp <= hi for lo, hi in ranges))


def upload_sample_images(label_studio, ls_client, *, every_third_from: int, n: int) -> tuple[list[dict], dict[str, str]]:
    """``n`` rows of the packaged sample set (every third, from ``every_third_from``) and the Label
    Studio URL of each row's uploaded image, by row id."""
    rows = [json.loads(line) for line in (SAMPLE_DIR / "items.jsonl").read_text().splitlines()]
    rows = [r for i, r in enumerate(rows) if i % 3 == every_third_from][:n]
    files = [(f"{r['id']}.png", (SAMPLE_DIR / r["image"]).read_bytes(), "image/png") for r in rows]
    _, uploaded = upload(label_studio, ls_client, files, f"image{every_third_from}",
                         '<View><Image name="image" value="$image"/></View>')
    urls = {t["data"]["image"].rsplit("-", 1)[-1].removesuffix(".png"): t["data"]["image"] for t in uploaded}
    assert len(urls) == len(rows) and all(u.startswith("/data/upload/") for u in urls.values())
    return rows, urls


def test_image_and_text_project_full_loop(label_studio, ls_client, backend_server):
    rows, urls = upload_sample_images(label_studio, ls_client, every_third_from=0, n=16)

    project = ls_client.projects.create(title="annotator-mm", label_config=MM_CONFIG)
    ls_client.projects.import_tasks(id=project.id, request=[{"image": urls[r["id"]], "text": r["text"]} for r in rows])
    tasks = [t if isinstance(t, dict) else t.model_dump() for t in ls_client.tasks.list(project=project.id, fields="all")]
    truth = {t["id"]: category(next(r["id"] for r in rows if r["text"] == t["data"]["text"])) for t in tasks}

    ml = ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator", is_interactive=False)
    assert ml.state in ("CO", None)

    # 1. cold start: zero-shot predictions for every task, valid for the config
    retrieve_predictions(ls_client, project.id)
    preds = predictions_of(ls_client, project.id)
    assert len(preds) == len(tasks) == 16
    assert {p["model_version"] for p in preds} == {"zero-shot"}
    for p in preds:
        [region] = p["result"]
        assert region["from_name"] == "category" and region["value"]["choices"][0] in truth.values()
        assert 0 < p["score"] <= 0.5

    # 2. annotations flow back through the webhook
    for t in tasks[:12]:
        ls_client.annotations.create(id=t["id"], result=[{"from_name": "category", "to_name": "image", "type": "choices",
                                                          "value": {"choices": [truth[t["id"]]]}}])
    wait_for(lambda: len(human_labels(backend_server, project.id)) == 12, what="12 labels from webhooks")

    # 2b. an event without the webhook secret is only a reason to pull the project from Label Studio:
    # what Label Studio holds is stored, not what the event says (#15)
    forged = {"action": "ANNOTATION_CREATED", "project": {"id": project.id, "label_config": MM_CONFIG},
              "task": {"id": tasks[0]["id"], "data": {"image": "http://attacker.example/x.png", "text": "forged"}},
              "annotation": {"id": 999_999, "task": tasks[0]["id"], "result": [
                  {"from_name": "category", "to_name": "image", "type": "choices", "value": {"choices": ["forged"]}}]}}
    answer = httpx.post(f"{backend_server.url}/webhook", json=forged, timeout=10)
    assert answer.status_code == 202 and answer.json()["sync"] == "requested"
    wait_for(lambda: not _sync_pending(backend_server, project.id), what="the pull the forged event asked for")
    with backend_server.store.session() as s:
        p = repo.get_project(s, name=project_name_for(project.id))
        [item] = repo.items_by_task_ids(s, project=p, task_ids=[tasks[0]["id"]]).values()
        assert item.data == {"image": tasks[0]["data"]["image"], "text": tasks[0]["data"]["text"]}
    assert sorted(human_labels(backend_server, project.id).values()) == sorted([truth[t["id"]]] for t in tasks[:12])

    # 3. Start Training → a promoted version → the next predictions carry it
    ls_client.ml.train(id=ml.id)
    wait_for(lambda: active_version(backend_server, project.id) == "v1", timeout_s=240, what="v1 to be promoted")
    # the backend re-scores every task and pushes the predictions itself after a promotion
    v1 = wait_for(lambda: [p for p in predictions_of(ls_client, project.id) if p["model_version"] == "v1"] or None,
                  what="v1 predictions pushed by the backend")
    wait_for(lambda: len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == "v1"]) == 16,
             what="all 16")
    v1 = [p for p in predictions_of(ls_client, project.id) if p["model_version"] == "v1"]
    retrieve_predictions(ls_client, project.id)  # nothing left to predict: no duplicates
    assert len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == "v1"]) == 16
    correct = np.mean([p["result"][0]["value"]["choices"][0] == truth[p["task"]] for p in v1])
    assert correct >= 0.75, correct

    # 4. annotations imported with tasks fire no webhook; sync recovers them
    extra = rows[0]
    ls_client.projects.import_tasks(id=project.id, request=[{
        "data": {"image": urls[extra["id"]], "text": extra["text"] + " (again)"},
        "annotations": [{"result": [{"from_name": "category", "to_name": "image", "type": "choices",
                                     "value": {"choices": [category(extra["id"])]}}]}]}])
    # the TASKS_CREATED event carries no secret: the pull it asks for brings the annotation in
    wait_for(lambda: len(human_labels(backend_server, project.id)) == 13, what="the imported annotation")
    synced = sync(backend_server.store, url=label_studio.url, api_key=label_studio.token,
                  ls_project_id=project.id)
    assert synced["tasks"] == 17 and synced["labels"] == 13
    assert len(human_labels(backend_server, project.id)) == 13

    # 5. the imported annotation is a new label: a refit serves it within seconds (v2, or v3 when Label Studio's
    # training request and the debounce each trained), and the backend pushes its predictions itself; connect
    # then finds every task predicted by the serving version, once, and Label Studio's sampling follows it
    served = wait_for(lambda: settled_version(backend_server, project.id), timeout_s=240, what="training to settle")
    assert served != "v1"
    wait_for(lambda: len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == served]) == 17,
             what=f"{served}'s predictions pushed by the backend")
    backend_server.trainer.wait()
    result = connect(backend_server.store, backend_server.settings, url=label_studio.url, api_key=label_studio.token,
                     ls_project_id=project.id, backend_url=backend_server.url, progress=False)
    assert result["ml_backend_id"] == ml.id and result["predictions"] == 0 and result["model_version"] == served
    assert ls_client.projects.get(id=project.id).model_version == served
    served_tasks = [p["task"] for p in predictions_of(ls_client, project.id) if p["model_version"] == served]
    assert len(served_tasks) == len(set(served_tasks)) == 17  # every task once, none twice
    again = connect(backend_server.store, backend_server.settings, url=label_studio.url, api_key=label_studio.token,
                    ls_project_id=project.id, backend_url=backend_server.url, progress=False)
    assert again["predictions"] == 0
    # connect gave Label Studio's webhook the project's secret: its events are now trusted as they come
    [hook] = [h for h in ls_client.webhooks.list(project=str(project.id)) if h.url == f"{backend_server.url}/webhook"]
    with backend_server.store.session() as s:
        secret = repo.get_project(s, name=project_name_for(project.id)).webhook_secret
    assert secret and len(secret) >= 32 and hook.headers == {"X-Annotator-Secret": secret}
    assert hook.id == result["webhook_id"] == again["webhook_id"]
    wrong = httpx.post(f"{backend_server.url}/webhook", json=forged, headers={"X-Annotator-Secret": "guess"}, timeout=10)
    assert wrong.status_code == 401


def test_text_only_project_zero_shot(label_studio, ls_client, backend_server):
    config = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
      <Choice value="sports"/><Choice value="cooking"/><Choice value="weather"/></Choices></View>"""
    project = ls_client.projects.create(title="annotator-text", label_config=config)
    texts = {"the striker scored twice in the final match": "sports", "bake the bread for forty minutes": "cooking",
             "heavy rain and strong winds expected tomorrow": "weather", "the goalkeeper saved a penalty": "sports"}
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in texts])
    ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator-text", is_interactive=False)
    retrieve_predictions(ls_client, project.id)
    tasks = {t.id: t.data["text"] for t in ls_client.tasks.list(project=project.id)}
    preds = predictions_of(ls_client, project.id)
    assert len(preds) == 4
    assert all(p["result"][0]["value"]["choices"] == [texts[tasks[p["task"]]]] for p in preds)


def _wav(seconds: float, freq: float | None) -> bytes:
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    samples = 0.3 * np.sin(2 * np.pi * freq * t) if freq else np.random.default_rng(0).normal(scale=0.1, size=t.shape)
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_audio_project_trains_from_annotations(label_studio, ls_client, backend_server):
    config = """<View><Audio name="audio" value="$audio"/><Choices name="kind" toName="audio">
      <Choice value="speech"/><Choice value="tone"/></Choices></View>"""
    speech = [(DATA / "cat_speech.wav").read_bytes(), (DATA / "coffee_speech.wav").read_bytes()]
    tones = [_wav(1.0, f) for f in (440, 660, 880)]
    files = [(f"speech{i}.wav", b, "audio/wav") for i, b in enumerate(speech * 2)] + \
            [(f"tone{i}.wav", b, "audio/wav") for i, b in enumerate(tones + tones[:1])]
    pid, tasks = upload(label_studio, ls_client, files, "audio", config)
    ml = ls_client.ml.create(project=pid, url=backend_server.url, title="annotator-audio", is_interactive=False)
    retrieve_predictions(ls_client, pid)
    # no text object: the Whisper transcript is the items' text, so speech gets a zero-shot guess from
    # what was said; a tone says nothing, has no text to compare label names with, and gets no prediction
    speech_tasks = {t["id"] for t in tasks if "speech" in t["data"]["audio"]}
    guessed = {p["task"] for p in predictions_of(ls_client, pid) if p["result"]}
    assert guessed == speech_tasks
    for t in tasks:
        label = "speech" if "speech" in t["data"]["audio"] else "tone"
        ls_client.annotations.create(id=t["id"], result=[{"from_name": "kind", "to_name": "audio", "type": "choices",
                                                          "value": {"choices": [label]}}])
    wait_for(lambda: len(human_labels(backend_server, pid)) == 8, what="8 audio labels")
    ls_client.ml.train(id=ml.id)
    wait_for(lambda: active_version(backend_server, pid) == "v1", timeout_s=240, what="audio v1")
    wait_for(lambda: len([p for p in predictions_of(ls_client, pid) if p["model_version"] == "v1"]) == 8,
             what="8 refreshed audio predictions")
    v1 = [p for p in predictions_of(ls_client, pid) if p["model_version"] == "v1"]
    by_task = {t["id"]: ("speech" if "speech" in t["data"]["audio"] else "tone") for t in tasks}
    assert np.mean([p["result"][0]["value"]["choices"][0] == by_task[p["task"]] for p in v1]) >= 0.75


def test_next_batch_and_review_queue_in_label_studio(label_studio, ls_client, backend_server, ray_address):
    from annotator.active.selection import find_label_errors, select_next
    from annotator.labelstudio.sync import push_next_batch, push_review_queue

    config = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
      <Choice value="animal"/><Choice value="vehicle"/><Choice value="food"/></Choices></View>"""
    words = {"animal": ["dog", "cat", "horse", "owl", "fox", "cow"], "vehicle": ["car", "bus", "truck", "train", "tram", "van"],
             "food": ["pizza", "apple", "bread", "soup", "cheese", "pasta"]}
    project = ls_client.projects.create(title="annotator-al", label_config=config)
    rows = [(f"a photo of a {w} {n}", c) for c, ws in words.items() for n in ("today", "outside") for w in ws]
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t, _ in rows])
    tasks = {t.data["text"]: t.id for t in ls_client.tasks.list(project=project.id)}
    ml = ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator-al", is_interactive=False)
    flipped = {rows[0][0]: "food", rows[13][0]: "animal"}  # two wrong labels among the annotated ones
    for text, label in rows[::2] + [rows[13]]:
        ls_client.annotations.create(id=tasks[text], result=[{"from_name": "topic", "to_name": "text", "type": "choices",
                                                              "value": {"choices": [flipped.get(text, label)]}}])
    settings, store = backend_server.settings, backend_server.store
    wait_for(lambda: len(human_labels(backend_server, project.id)) == 19, what="19 labels")
    ls_client.ml.train(id=ml.id)
    name = project_name_for(project.id)
    version = wait_for(lambda: settled_version(backend_server, project.id), timeout_s=240, what="training to settle")
    assert version in ("v1", "v2")
    # the backend re-scored every task after training and pushed the predictions itself
    wait_for(lambda: len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]) == len(rows),
             what=f"refreshed {version} predictions for every task")
    # the project's version switches after the last chunk of predictions is stored, not with it
    wait_for(lambda: ls_client.projects.get(id=project.id).model_version == version, what=f"project model_version {version}")

    # `annotator predict --engine ray --to-labelstudio` (on the session's Ray cluster) pre-labels the whole project
    # and pushes what Label Studio lacks: here the three predictions deleted first, and nothing twice
    pushed_before = [p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]
    for p in pushed_before[:3]:
        ls_client.predictions.delete(id=p["id"])
    from tests.cli.test_cli import run_cli

    proc = run_cli("predict", "--project", name, "--engine", "ray", "--ray-address", ray_address, "--to-labelstudio",
                   "--json", env_extra={"ANNOTATOR_DATA_DIR": str(settings.data_dir), "LABEL_STUDIO_URL": label_studio.url,
                                        "LABEL_STUDIO_API_KEY": label_studio.token})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout)) == len(rows) and f"3 prediction(s) pushed (model version {version})" in proc.stderr
    again = [p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]
    assert sorted(p["task"] for p in again) == sorted(p["task"] for p in pushed_before)

    runtime = backend_server.runtime
    picks = select_next(store, settings, project_name=name, strategy="margin", k=3, runtime=runtime, progress=False)
    pushed = push_next_batch(store, runtime, url=label_studio.url, api_key=label_studio.token, project_name=name,
                             picks=picks, strategy="margin")
    assert ls_client.projects.get(id=project.id).model_version == pushed["model_version"]
    served = []
    for _ in range(3):  # Label Studio's own "next task" follows our batch, in order
        nxt = httpx.get(f"{label_studio.url}/api/projects/{project.id}/next",
                        headers={"Authorization": f"Token {label_studio.token}"}).json()
        served.append(str(nxt["id"]))
        ls_client.annotations.create(id=nxt["id"], result=[], was_cancelled=True)
    assert served == [p["id"] for p in picks]

    suspects = find_label_errors(store, settings, project_name=name, encoders=runtime.encoders, folds=3, progress=False)
    queue = push_review_queue(store, url=label_studio.url, api_key=label_studio.token, project_name=name,
                              suspects=suspects[:4])
    in_view = {t.id for t in ls_client.tasks.list(project=project.id, view=queue["view_id"])}
    assert in_view == {int(s["id"]) for s in suspects[:4]}
    assert {tasks[t] for t in flipped} <= {int(s["id"]) for s in suspects[:4]}

    # with ANNOTATOR_NEXT_BATCH_STRATEGY set, the refresh after a retrain chooses and orders the next batch itself
    trainer = backend_server.trainer
    trainer.settings = settings.model_copy(update={"next_batch_strategy": "entropy", "next_batch_size": 2})
    try:
        sent = trainer.refresh_label_studio(name)
    finally:
        trainer.settings = settings
    version = ls_client.projects.get(id=project.id).model_version
    with store.session() as s:  # the version that serves now (a second training may have followed the settled one)
        active = repo.active_model_version(s, project=repo.get_project(s, name=name)).version
    assert sent == len(rows) and version.startswith(f"{active}-next-entropy-")
    expected = select_next(store, settings, project_name=name, strategy="entropy", k=2, runtime=runtime, progress=False)
    ordered = sorted((p for p in predictions_of(ls_client, project.id) if p["model_version"] == version),
                     key=lambda p: p["score"])
    assert [str(p["task"]) for p in ordered[:2]] == [e["id"] for e in expected]


def test_three_annotators_who_disagree_land_in_the_review_tab(label_studio, ls_client, backend_server):
    """Three Label Studio users label the same tasks: every annotation is kept (not the latest one),
    training sees the majority, and the tasks they disagree on become a review tab, most contested first."""
    from annotator.active.selection import annotator_agreement
    from annotator.labelstudio.sync import push_review_queue

    config = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
      <Choice value="animal"/><Choice value="vehicle"/><Choice value="food"/></Choices></View>"""
    project = ls_client.projects.create(title="annotator-crowd", label_config=config)
    texts = ["a dog in the park", "a red bus", "a bowl of soup", "a horse on a road"]
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in texts])
    tasks = {t.data["text"]: t.id for t in ls_client.tasks.list(project=project.id)}
    ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator-crowd", is_interactive=False)
    headers = {"Authorization": f"Token {label_studio.token}"}
    users = []
    for name in ("ann-b", "ann-c"):  # two more annotators in the organisation
        r = httpx.post(f"{label_studio.url}/api/users/", headers=headers,
                       json={"username": f"{name}-{project.id}", "email": f"{name}-{project.id}@example.com"})
        assert r.status_code == 201, r.text
        users.append(r.json()["id"])
    me = httpx.get(f"{label_studio.url}/api/current-user/whoami", headers=headers).json()["id"]
    votes = {  # per task: what the admin, ann-b and ann-c chose
        "a dog in the park": ["animal", "animal", "animal"],
        "a red bus": ["vehicle", "food", "animal"],  # three different answers: the most contested
        "a bowl of soup": ["food", "food", "animal"],  # two against one
        "a horse on a road": ["animal", "animal", "vehicle"],
    }
    for text, choices in votes.items():
        for user, choice in zip([me, *users], choices):
            r = httpx.post(f"{label_studio.url}/api/tasks/{tasks[text]}/annotations/", headers=headers,
                           json={"completed_by": user, "result": [{"from_name": "topic", "to_name": "text",
                                                                  "type": "choices", "value": {"choices": [choice]}}]})
            assert r.status_code == 201, r.text
    name = project_name_for(project.id)

    def agreement():
        report = annotator_agreement(backend_server.store, project_name=name)
        return report if sum(a["items"] for a in report["annotators"].values()) == 12 else None

    report = wait_for(agreement, what="12 annotations from 3 annotators")
    assert len(report["annotators"]) == 3 and report["items_with_several_annotators"] == 4
    # training labels are the consensus, not whichever annotation came last
    with backend_server.store.session() as s:
        p = repo.get_project(s, name=name)
        ids = repo.external_ids(s, project=p)
        labels = {int(ids[pk]): v for pk, v in repo.current_labels(s, project=p).items()}
    assert labels[tasks["a bowl of soup"]] == ["food"] and labels[tasks["a horse on a road"]] == ["animal"]
    contested = [int(d["id"]) for d in report["disagreements"]]
    assert contested[0] == tasks["a red bus"]
    assert set(contested) == {tasks["a red bus"], tasks["a bowl of soup"], tasks["a horse on a road"]}

    queue = push_review_queue(backend_server.store, url=label_studio.url, api_key=label_studio.token, project_name=name,
                              suspects=report["disagreements"], title="annotators disagree")
    in_view = [t.id for t in ls_client.tasks.list(project=project.id, view=queue["view_id"])]
    assert set(in_view) == set(contested) and tasks["a dog in the park"] not in in_view


THREE_CONFIG = MM_CONFIG.replace("</View>", """  <Choices name="alive" toName="caption"><Choice value="living"/><Choice value="made"/></Choices>
  <Taxonomy name="topic" toName="caption">
    <Choice value="Nature"><Choice value="Animal"/><Choice value="Plant"/></Choice>
    <Choice value="Human-made"><Choice value="Food"/><Choice value="Transport"/></Choice>
  </Taxonomy>
</View>""")
TOPIC = {"animal": ["Nature", "Animal"], "plant": ["Nature", "Plant"], "food": ["Human-made", "Food"],
         "transport": ["Human-made", "Transport"]}


def test_two_choices_and_a_taxonomy_are_each_trained_and_predicted(label_studio, ls_client, backend_server):
    """#19 part 1: annotate three questions per task in Label Studio → webhooks → Start Training →
    a model per control → the backend pushes predictions with one region per control."""
    rows, urls = upload_sample_images(label_studio, ls_client, every_third_from=1, n=14)
    project = ls_client.projects.create(title="annotator-three-questions", label_config=THREE_CONFIG)
    ls_client.projects.import_tasks(id=project.id, request=[{"image": urls[r["id"]], "text": r["text"]} for r in rows])
    tasks = [t if isinstance(t, dict) else t.model_dump() for t in ls_client.tasks.list(project=project.id, fields="all")]
    truth = {t["id"]: category(next(r["id"] for r in rows if r["text"] == t["data"]["text"])) for t in tasks}
    ml = ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator-three", is_interactive=False)

    for t in tasks[:12]:
        c = truth[t["id"]]
        ls_client.annotations.create(id=t["id"], result=[
            {"from_name": "category", "to_name": "image", "type": "choices", "value": {"choices": [c]}},
            {"from_name": "alive", "to_name": "caption", "type": "choices",
             "value": {"choices": ["living" if c in ("animal", "plant") else "made"]}},
            {"from_name": "topic", "to_name": "caption", "type": "taxonomy", "value": {"taxonomy": [TOPIC[c]]}}])

    def controls_labelled():
        with backend_server.store.session() as s:
            p = repo.get_project(s, name=project_name_for(project.id))
            return [len(repo.current_labels(s, project=p, control=c)) for c in (None, "alive", "topic")]

    wait_for(lambda: controls_labelled() == [12, 12, 12], what="12 labels per control from webhooks")
    ls_client.ml.train(id=ml.id)
    version = "v1+alive.v1+topic.v1"
    wait_for(lambda: len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]) == 14,
             timeout_s=300, what=f"{version} predictions for all 14 tasks, pushed by the backend")
    preds = [p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]
    for p in preds:
        regions = {r["from_name"]: r for r in p["result"]}
        assert set(regions) == {"category", "alive", "topic"}
        assert regions["topic"]["type"] == "taxonomy" and regions["topic"]["value"]["taxonomy"][0] in TOPIC.values()
        assert regions["alive"]["value"]["choices"][0] in ("living", "made")
    topic_right = np.mean([{r["from_name"]: r for r in p["result"]}["topic"]["value"]["taxonomy"] == [TOPIC[truth[p["task"]]]]
                           for p in preds])
    assert topic_right >= 0.75, topic_right
    retrieve_predictions(ls_client, project.id)  # Label Studio already holds this version for every task: no re-predict
    assert len([p for p in predictions_of(ls_client, project.id) if p["model_version"] == version]) == 14


def test_an_audio_project_gets_whisper_transcripts_in_its_textarea(label_studio, ls_client, backend_server):
    """#19 part 2: espeak-made speech uploaded to Label Studio comes back as transcripts in the
    project's <TextArea>, with the words spoken."""
    config = """<View><Audio name="audio" value="$audio"/><TextArea name="transcript" toName="audio" editable="true"/></View>"""
    files = [("cat.wav", (DATA / "cat_speech.wav").read_bytes(), "audio/wav"),
             ("coffee.wav", (DATA / "coffee_speech.wav").read_bytes(), "audio/wav")]
    pid, tasks = upload(label_studio, ls_client, files, "speech", config)
    ls_client.ml.create(project=pid, url=backend_server.url, title="annotator-speech", is_interactive=False)
    retrieve_predictions(ls_client, pid)
    said = {}
    for p in predictions_of(ls_client, pid):
        [region] = p["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("transcript", "audio", "textarea")
        said[p["task"]] = region["value"]["text"][0].lower()
    by_name = {("cat" if "cat" in t["data"]["audio"] else "coffee"): said[t["id"]] for t in tasks}
    assert "sleeping" in by_name["cat"] and "sofa" in by_name["cat"], by_name
    assert "coffee" in by_name["coffee"], by_name


def test_search_hits_become_one_tab_in_label_studio_most_similar_first(label_studio, ls_client, backend_server):
    """#19 part 3: /search with to_labelstudio makes a Data Manager tab holding the hits in order of
    similarity; a second search replaces the tab (and the first search's field) instead of adding one."""
    from annotator.indexing import embed_project

    config = """<View><Text name="text" value="$text"/><Choices name="topic" toName="text">
      <Choice value="dogs"/><Choice value="cooking"/></Choices></View>"""
    texts = ["a puppy chasing a ball in the park", "my dog sleeps on the couch all day", "the old hound barked at the mailman",
             "knead the dough and bake the bread", "simmer the tomato sauce for an hour", "whisk eggs and sugar for the cake"]
    project = ls_client.projects.create(title="annotator-search-tab", label_config=config)
    ls_client.projects.import_tasks(id=project.id, request=[{"text": t} for t in texts])
    ls_client.ml.create(project=project.id, url=backend_server.url, title="annotator-search", is_interactive=False)
    retrieve_predictions(ls_client, project.id)  # /predict registers and encodes the tasks
    name = project_name_for(project.id)
    embed_project(backend_server.backend.store, backend_server.settings, project_name=name,
                  encoders=backend_server.backend.runtime.encoders, progress=False)
    task_of = {t.data["text"]: t.id for t in ls_client.tasks.list(project=project.id)}

    def search(text, k):
        r = httpx.post(f"{backend_server.url}/search", json={"project": project.id, "text": text, "k": k,
                                                             "to_labelstudio": True}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def tabs():
        return [v for v in ls_client.views.list(project=project.id) if v.data["title"].startswith("annotator search")]

    def tab_tasks(view_id):
        return [t.id for t in ls_client.tasks.list(project=project.id, view=view_id)]

    first = search("a dog playing", 3)
    hits = [int(h["id"]) for h in first["hits"]]
    assert set(hits) == {task_of[t] for t in texts[:3]}
    [tab] = tabs()
    assert tab.id == first["label_studio"]["view_id"] and tab.data["title"] == "annotator search: text a dog playing"
    assert tab_tasks(tab.id) == hits  # most similar first, as the search ranked them
    similarity = {t: ls_client.tasks.get(id=t).data.get("annotator_similarity") for t in hits}
    assert all(similarity[a] >= similarity[b] for a, b in zip(hits, hits[1:]))

    second = search("baking a cake", 2)
    hits2 = [int(h["id"]) for h in second["hits"]]
    assert set(hits2) <= {task_of[t] for t in texts[3:]}
    [tab2] = tabs()
    assert tab2.id == tab.id and tab_tasks(tab2.id) == hits2  # replaced, not piled up
    assert hits2[0] == task_of[texts[5]] and hits2 != sorted(hits2)  # the cake first: the tab's order is not the ids'
    assert all("annotator_similarity" not in ls_client.tasks.get(id=t).data for t in hits)  # the old hits are clean

    # the same from the command line: "label all items like this one"
    from tests.cli.test_cli import run_cli

    proc = run_cli("search", "--project", name, "--item", str(task_of[texts[0]]), "-k", "2", "--to-labelstudio", "--json",
                   env_extra={"ANNOTATOR_DATA_DIR": str(backend_server.settings.data_dir),
                              "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token})
    assert proc.returncode == 0, proc.stderr
    like_first = [int(h["id"]) for h in json.loads(proc.stdout)]
    assert set(like_first) == {task_of[t] for t in texts[1:3]}
    [tab3] = tabs()
    assert tab3.id == tab.id and tab_tasks(tab3.id) == like_first
    assert tab3.data["title"] == f"annotator search: like item {task_of[texts[0]]}"

"""The newcomer's first run on the bundled sample project (48 emoji; half labelled).

Imports the sample items, encodes them with the offline default models, trains a fusion model on
the labelled half, and pre-labels the other half. A second run reuses the cache and the store.
"""

from __future__ import annotations

from typing import Any

from annotator.config import Settings
from annotator.importer import import_manifest
from annotator.indexing import embed_project
from annotator.prediction import predict
from annotator.runtime import Runtime
from annotator.sample_data import SAMPLE_DIR, SAMPLE_MANIFEST
from annotator.store import Store, open_store, repo
from annotator.training import retrain

DEMO_PROJECT = "demo"


def run_offline_demo(store: Store, settings: Settings, *, project_name: str = DEMO_PROJECT,
                     progress: bool = True) -> dict[str, Any]:
    """Import → embed → retrain → predict on the sample data; returns a summary."""
    runtime = Runtime(settings)
    with store.session() as s:
        imported = import_manifest(s, project_name=project_name, manifest=SAMPLE_MANIFEST)
    embedded = embed_project(store, settings, project_name=project_name, encoders=runtime.encoders, progress=progress)
    trained = retrain(store, settings, project_name=project_name, encoders=runtime.encoders,
                      progress=progress, trigger="demo")
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        labelled = repo.current_labels(s, project=project)
        unlabelled = [it.external_id for it in repo.list_items(s, project=project) if it.id not in labelled]
        captions = {it.external_id: it.data.get("text", "") for it in repo.list_items(s, project=project)}
    predicted = predict(store, settings, project_name=project_name, item_ids=unlabelled, runtime=runtime,
                        progress=progress)
    return {
        "project": project_name,
        "imported": imported.imported,
        "embedded": embedded.to_dict(),
        "model_version": trained.model_version,
        "promoted": trained.promoted,
        "model": trained.model,
        "metrics": {k: trained.metrics[k] for k in ("accuracy", "macro_f1", "ece")},
        "predictions": [{**p, "text": captions[p["id"]]} for p in predicted.predictions],
    }


def run_labelstudio_demo(settings: Settings, *, wait: bool = True, ls_port: int = 8080, backend_port: int = 9090,
                         say=print) -> dict[str, Any]:
    """A real Label Studio wired to the backend, on the bundled sample project.

    Installs Label Studio into its own virtualenv when missing, starts it on 127.0.0.1, starts the
    backend, creates the sample project (images + captions, half of them labelled), trains on the
    labelled half, pre-labels every task, prints where to log in, and serves until Ctrl-C. A second
    run reuses Label Studio's data, the login and the project.
    """
    import json
    import threading
    import time

    import uvicorn

    from annotator.labelstudio.client import client_for, find_backend
    from annotator.labelstudio.server import LabelStudioServer, free_port
    from annotator.labelstudio.sync import connect, sync
    from annotator.labelstudio.tasks import project_name_for
    from annotator.backends.app import create_app

    state_dir = settings.data_dir / "demo"
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / "labelstudio.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    venv = settings.resolved_label_studio_venv
    if not (venv / "bin" / "label-studio").exists():
        say(f"installing Label Studio into {venv} (first run only, a few minutes)…")
    ls = LabelStudioServer(venv, settings.data_dir / "label-studio" / "data", port=ls_port,
                           user=state.get("user", "admin@annotator.local"), password=state.get("password"),
                           token=state.get("token"))
    state.update(user=ls.user, password=ls.password, token=ls.token)
    state_path.write_text(json.dumps(state))
    served = settings.with_label_studio(ls.url, ls.token)
    store, runtime = open_store(served), Runtime(served)  # before Label Studio starts: a refused database stops here
    say(f"starting Label Studio on {ls.url} …")
    ls.start()
    port = free_port(backend_port)
    server = uvicorn.Server(uvicorn.Config(create_app(served, store=store, runtime=runtime), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    backend_url = f"http://127.0.0.1:{port}"
    try:
        client = client_for(ls.url, ls.token)
        pid = state.get("project_id")
        if pid is None or not any(p.id == pid for p in client.projects.list()):
            say("creating the sample project …")
            pid = _create_sample_project(client, ls)
            state["project_id"] = pid
            state_path.write_text(json.dumps(state))
        if find_backend(client, pid, backend_url) is None:
            client.ml.create(project=pid, url=backend_url, title="annotator", is_interactive=False)
        sync(store, url=ls.url, api_key=ls.token, ls_project_id=pid, ls=client)
        trained = None
        with store.session() as s:
            has_model = repo.active_model_version(s, project=repo.get_project(s, name=project_name_for(pid)))
        if has_model is None:
            say("training on the labelled half …")
            trained = retrain(store, served, project_name=project_name_for(pid), encoders=runtime.encoders,
                              trigger="demo")
        wired = connect(store, served, url=ls.url, api_key=ls.token, ls_project_id=pid,
                        backend_url=backend_url, runtime=runtime)
        summary = {"label_studio_url": ls.url, "user": ls.user, "password": ls.password,
                   "project_url": f"{ls.url}/projects/{pid}/data", "backend_url": backend_url,
                   "project": project_name_for(pid), "tasks": wired["tasks"], "model_version": wired["model_version"],
                   "predictions_uploaded": wired["predictions"],
                   "metrics": trained.to_dict()["metrics"] if trained else None}
        say(f"\nLabel Studio: {ls.url}  (log in as {ls.user} / {ls.password})\n"
            f"sample project: {summary['project_url']} — {summary['tasks']} tasks pre-labelled by "
            f"{summary['model_version']}\nbackend: {backend_url}; label a few tasks, press 'Start Training' in the "
            f"project's Model settings, and new predictions follow.")
        if wait:
            import signal

            def _stop(*_):
                raise KeyboardInterrupt

            # Ctrl-C works even when a parent shell started us with SIGINT ignored, and SIGTERM (kill,
            # systemd, docker stop) stops cleanly too: Label Studio runs in its own session and would
            # otherwise be left running.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _stop)
            say("Ctrl-C stops Label Studio and the backend.")
            try:
                while thread.is_alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                say("stopping …")
        return summary
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
        ls.stop()


def _create_sample_project(client, ls) -> int:
    """Upload the sample images (through a one-field project, as Label Studio requires for uploads)
    and create the demo project with captions; half the tasks arrive labelled."""
    import json

    import httpx

    rows = [json.loads(line) for line in (SAMPLE_DIR / "items.jsonl").read_text().splitlines()]
    uploads = client.projects.create(title="annotator demo uploads", label_config='<View><Image name="image" value="$image"/></View>')
    r = httpx.post(f"{ls.url}/api/projects/{uploads.id}/import", headers={"Authorization": f"Token {ls.token}"},
                   files=[(f"file{i}", (f"{r['id']}.png", (SAMPLE_DIR / r["image"]).read_bytes(), "image/png"))
                          for i, r in enumerate(rows)], timeout=120)
    r.raise_for_status()
    urls = {t.data["image"].rsplit("-", 1)[-1].removesuffix(".png"): t.data["image"]
            for t in client.tasks.list(project=uploads.id, fields="all")}
    choices = "".join(f'<Choice value="{c}"/>' for c in sorted({r["label"] for r in rows if "label" in r}))
    config = (f'<View><Image name="image" value="$image"/><Text name="caption" value="$text"/>'
              f'<Choices name="category" toName="image" choice="single">{choices}</Choices></View>')
    project = client.projects.create(title="annotator demo", label_config=config)
    tasks = []
    for r in rows:
        task = {"data": {"image": urls[r["id"]], "text": r["text"]}}
        if "label" in r:
            task["annotations"] = [{"result": [{"from_name": "category", "to_name": "image", "type": "choices",
                                                "value": {"choices": [r["label"]]}}]}]
        tasks.append(task)
    client.projects.import_tasks(id=project.id, request=tasks)
    return project.id

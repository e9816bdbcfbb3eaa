"""`annotator serve --workers 3` on a real Postgres, as a deployment runs it: any worker may get any
request, and none keeps state the others need.

Label Studio's media server is played by a small HTTP server that, like Label Studio, refuses media
without the access token; a real Label Studio adds nothing to what is tested here (the token travels
in /setup, which only one worker receives)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa

from annotator.sample_data import SAMPLE_DIR, SAMPLE_MANIFEST
from tests.cli.test_cli import ROOT
from tests.integration.label_studio import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
TOKEN = "secret-token"
CONFIG = ('<View><Image name="image" value="$image"/><Text name="caption" value="$text"/>'
          '<Choices name="category" toName="image">{}</Choices></View>')
ROWS = [json.loads(line) for line in SAMPLE_MANIFEST.read_text().splitlines()]


class _MediaServer(BaseHTTPRequestHandler):
    """``/data/upload/<name>/<id>.png`` → the sample image ``<id>``, only with ``Token secret-token``."""

    served: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        image = SAMPLE_DIR / "media" / (self.path.rsplit("/", 1)[-1])
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            body, code = b"unauthorized", 401
        elif not self.path.startswith("/data/upload/") or not image.is_file():
            body, code = b"not found", 404
        else:
            body, code = image.read_bytes(), 200
            type(self).served.append(self.path)
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def media_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _MediaServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _task(i: int, row: dict, folder: str = "storm") -> dict:
    return {"id": i, "data": {"image": f"/data/upload/{folder}/{row['image'].rsplit('/', 1)[-1]}", "text": row["text"]}}


def test_three_workers_share_labels_training_models_and_label_studio_access(tmp_path, pg_database, media_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}
    env.update({"ANNOTATOR_DATA_DIR": str(tmp_path / "shared"), "ANNOTATOR_DATABASE_URL": pg_database,
                "ANNOTATOR_MODEL": "logreg", "ANNOTATOR_SELF_TRAINING": "off", "ANNOTATOR_WEBHOOK_SECRET": "storm-secret",
                # the loopback "Label Studio" that /setup names: without basic auth, /setup's address is
                # reached only where the operator allows it (#33)
                "ANNOTATOR_MEDIA_ALLOW_HOSTS": "127.0.0.1"})
    subprocess.run([sys.executable, "-m", "annotator.cli.main", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "annotator.cli.main", "serve", "--port", str(port), "--workers", "3"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    engine = sa.create_engine(pg_database)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        labels = sorted({r["label"] for r in ROWS if "label" in r})
        config = CONFIG.format("".join(f'<Choice value="{c}"/>' for c in labels))
        # only one worker hears how to reach Label Studio
        assert httpx.post(f"{url}/setup", json={"project": "4.17", "schema": config, "hostname": media_server,
                                                "access_token": TOKEN}).json()["model_version"] == "zero-shot"

        # 1. a webhook storm over fresh connections, so the workers share it: no label is lost
        labelled = [(i, r) for i, r in enumerate(ROWS, start=1) if "label" in r]
        events = [{"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": config}, "task": _task(i, r),
                   "annotation": {"id": 100 + i, "task": i, "completed_by": 1, "was_cancelled": False,
                                  "result": [{"from_name": "category", "to_name": "image", "type": "choices",
                                              "value": {"choices": [r["label"]]}}]}} for i, r in labelled]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda ev: httpx.post(f"{url}/webhook", json=ev, timeout=30,
                                                          headers={"X-Annotator-Secret": "storm-secret"}), events))
        assert all(a.status_code == 200 and a.json()["recorded"] == 1 for a in answers)
        assert len({a.headers["X-Annotator-Worker"] for a in answers}) >= 2  # the storm was spread over workers
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM labels WHERE deleted_at IS NULL")).scalar() == len(labelled)

        # 2. one debounced training for the burst, across all workers' trainers
        deadline = time.time() + 300
        while time.time() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM training_runs WHERE status = 'succeeded'")).scalar():
                    break
            time.sleep(1)
        time.sleep(8)  # long past the 5 s quiet period: a second trainer would have started by now
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT status FROM training_runs")).scalars().all()
            unfetched = conn.execute(sa.text("SELECT count(*) FROM items WHERE image_sha IS NULL")).scalar()
        assert runs == ["succeeded"]
        assert unfetched == 0  # the training worker fetched every image with the token /setup stored

        # 3. every worker serves the new version within seconds, and fetches media with the stored token
        seen_v1: set[str] = set()
        fetched_by: dict[str, int] = {}
        deadline = time.time() + 120
        n = 1000
        while time.time() < deadline and (len(seen_v1) < 3 or len(fetched_by) < 3):
            r = httpx.post(f"{url}/setup", json={"project": "4.17", "schema": config}, timeout=10)
            if r.json()["model_version"] == "v1":
                seen_v1.add(r.headers["X-Annotator-Worker"])
            n += 1
            row = ROWS[n % len(ROWS)]
            before = len(_MediaServer.served)
            r = httpx.post(f"{url}/predict", json={"tasks": [_task(n, row, folder=f"new-{n}")], "project": "4.17",
                                                   "label_config": config}, timeout=60)
            result = r.json()["results"][0]
            if result["model_version"] == "v1" and result["result"] and len(_MediaServer.served) > before:
                fetched_by[r.headers["X-Annotator-Worker"]] = fetched_by.get(r.headers["X-Annotator-Worker"], 0) + 1
        assert len(seen_v1) == 3, f"workers serving v1: {seen_v1}"
        assert len(fetched_by) == 3, f"workers that fetched media with the stored token: {fetched_by}"

        # 4. kill -9 of one worker in the middle of a second storm: every label whose event was
        #    acknowledged is stored, and the supervisor's replacement serves
        victim = int(next(iter(seen_v1)))
        storm = [{**ev, "task": {**ev["task"], "id": 5000 + n},
                  "annotation": {**ev["annotation"], "id": 5000 + n, "task": 5000 + n}}
                 for n, ev in enumerate(events * 5)]

        def send(n_event):
            n, ev = n_event
            if n == len(storm) // 3:
                os.kill(victim, signal.SIGKILL)
            try:
                return httpx.post(f"{url}/webhook", json=ev, timeout=30, headers={"X-Annotator-Secret": "storm-secret"})
            except httpx.HTTPError:
                return None  # the connection died with its worker: not acknowledged

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, enumerate(storm)))
        acknowledged = {5000 + n for n, a in enumerate(answers) if a is not None and a.status_code == 200}
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT i.external_id FROM labels l JOIN items i ON i.id = l.item_id "
                                              "WHERE l.deleted_at IS NULL")).scalars())
        assert len(acknowledged) > len(storm) // 2 and acknowledged <= {int(x) for x in stored}
        assert victim not in {int(a.headers["X-Annotator-Worker"]) for n, a in enumerate(answers)
                              if a is not None and n > len(storm) // 3 + 16}  # later events went to the others
        serving, deadline = set(), time.time() + 120
        while time.time() < deadline and len(serving) < 3:  # uvicorn's supervisor replaces the dead worker
            serving.add(httpx.get(f"{url}/health", timeout=5).headers["X-Annotator-Worker"])
        assert str(victim) not in serving and len(serving) == 3, serving
    finally:
        engine.dispose()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

"""`annotator serve` as a user starts it: a real uvicorn process on the offline models."""

import os
import subprocess
import sys
import time

import httpx

from tests.cli.test_cli import ROOT
from tests.integration.label_studio import free_port

CONFIG = '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/></Choices></View>'


def test_serve_answers_health_and_setup(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOTATOR_")}
    env.update({"ANNOTATOR_DATA_DIR": str(tmp_path / "data"), "ANNOTATOR_BASIC_AUTH_USER": "u",
                "ANNOTATOR_BASIC_AUTH_PASS": "p"})
    proc = subprocess.Popen([sys.executable, "-m", "annotator.cli.main", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                r = httpx.get(f"{url}/health", auth=("u", "p"), timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["status"] == "UP"
        assert httpx.get(f"{url}/health", timeout=1).status_code == 401
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/setup", json={"project": "3.1700000000", "schema": CONFIG}, auth=("u", "p"))
        assert r.json()["model_version"] == "zero-shot" and time.perf_counter() - t0 < 3  # LS's /setup timeout
    finally:
        proc.terminate()
        proc.wait(timeout=20)

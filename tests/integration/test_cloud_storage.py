"""Tasks whose media sit in cloud storage (``s3://…``): the backend fetches them through a real Label
Studio's presign endpoint, with the project's S3 storage pointed at an S3-compatible server on
loopback (moto's server mode, the session's `s3_server`).

Not covered here: Google Cloud Storage and Azure Blob (the same endpoint and code path; no local
emulator installable from the registries here)."""

from __future__ import annotations

import time

import httpx
import pytest

from annotator.backend import Backend
from annotator.config import Settings
from annotator.encoders.registry import Encoders
from annotator.labelstudio.client import list_tasks
from annotator.runtime import Runtime
from annotator.store import open_store, repo
from tests.conftest import DATA

pytestmark = pytest.mark.integration
CONFIG = """<View><Image name="image" value="$image"/><Choices name="kind" toName="image">
  <Choice value="cat"/><Choice value="coffee"/></Choices></View>"""


def test_s3_media_are_fetched_through_label_studios_presign_endpoint(label_studio, ls_client, s3_server,
                                                                     offline_encoders, tmp_path):
    s3_endpoint = s3_server
    bucket = f"media-{int(time.time())}"
    assert httpx.put(f"{s3_endpoint}/{bucket}").status_code == 200  # moto: unsigned requests are accepted
    images = {"cat.png": (DATA / "cat.png").read_bytes(), "coffee.jpg": (DATA / "coffee.jpg").read_bytes()}
    for key, body in images.items():
        assert httpx.put(f"{s3_endpoint}/{bucket}/{key}", content=body).status_code == 200
    project = ls_client.projects.create(title="annotator-s3", label_config=CONFIG)
    headers = {"Authorization": f"Token {label_studio.token}"}
    storage = httpx.post(f"{label_studio.url}/api/storages/s3", headers=headers, json={
        "project": project.id, "title": "moto", "bucket": bucket, "use_blob_urls": True, "presign": True,
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1",
        "s3_endpoint": s3_endpoint}, timeout=60)
    assert storage.status_code == 201, storage.text
    synced = httpx.post(f"{label_studio.url}/api/storages/s3/{storage.json()['id']}/sync", headers=headers, timeout=60)
    assert synced.status_code == 200, synced.text
    deadline = time.time() + 60
    while len(tasks := list_tasks(ls_client, project.id)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert sorted(t["data"]["image"] for t in tasks) == [f"s3://{bucket}/cat.png", f"s3://{bucket}/coffee.jpg"]

    # Label Studio's URL and token come from /setup alone; the presigned URLs point at moto on loopback, which
    # stands in for S3 and must be allowed as a private address would be
    settings = Settings(data_dir=tmp_path / "data", media_allow_hosts="127.0.0.1")
    store = open_store(settings)
    backend = Backend(settings, store=store, runtime=Runtime(settings, encoders=Encoders(settings, overrides=dict(offline_encoders))))
    backend.setup(project=project.id, schema=CONFIG, hostname=label_studio.url, access_token=label_studio.token)
    backend.predict(tasks=[{"id": t["id"], "data": t["data"]} for t in tasks], project=project.id, label_config=CONFIG)
    with store.session() as s:
        items = repo.list_items(s, project=repo.get_project(s, name=f"ls-{project.id}"))
        fetched = {it.data["image"].rsplit("/", 1)[-1]: it.image_sha for it in items}
    from annotator.media import sha256

    assert fetched == {key: sha256(body) for key, body in images.items()}  # the objects' own bytes
    backend.close()
    store.close()

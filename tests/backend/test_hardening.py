"""#33: one bad task fails alone, /setup cannot re-point a project, hostile bodies get 4xx, stored
strings are bounded alike on SQLite and Postgres, and errors name no server path or other project.

Through FastAPI's TestClient with the real offline models; loopback HTTP servers stand in for
Label Studio and for an internal service."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from annotator.backend import Backend
from annotator.backends.app import create_app
from annotator.errors import MediaError, ValueTooLongError
from annotator.labelstudio.tasks import label_studio_settings
from annotator.media import MediaFetcher
from annotator.runtime import Runtime
from annotator.store import open_store, repo
from tests.backend.test_protocol import CONFIG, task
from tests.conftest import DATA

CAT = (DATA / "cat.png").read_bytes()


@contextmanager
def recorder(answer=None):
    """A loopback HTTP server that records every request (method, path, body) and answers
    ``answer(handler)`` (default: the cat image)."""
    seen: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self):
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, self.rfile.read(length) if length else b""))
            if answer is not None:
                return answer(self)
            self.send_response(200)
            self.send_header("Content-Length", str(len(CAT)))
            self.end_headers()
            self.wfile.write(CAT)

        do_GET = do_POST = _record

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()


@pytest.fixture
def backend(settings, encoders):
    store = open_store(settings)
    yield Backend(settings, store=store, runtime=Runtime(settings, encoders=encoders))
    store.close()


def client_for(settings, backend) -> TestClient:
    return TestClient(create_app(settings, store=backend.store, runtime=backend.runtime, start_trainer=False),
                      raise_server_exceptions=False)


# URLs that no HTTP client can use, each in a task beside good ones; before #33 the octal IPv4
# raised httpx.InvalidURL out of the encoding job and every task of the request went unanswered
BAD_URLS = ["http://0177.0.0.1/x.png", "http://[::1/x.png", "http://exa mple.com/x.png", "http://%zz/x.png",
            "http://a..b/x.png", "https://:0/x.png", "http://" + "a" * 300 + ".com/x.png", "http://\u0000/x.png",
            "http://[v1.fe80::a+en1]/x.png", "http://user@:80/x.png", "https://exa\u200bmple.com/x.png",
            "http:///x.png", "ftp://example.com/x.png", "gopher://127.0.0.1:70/x", "data:image/png;base64,AAAA",
            "s3://bucket/x.png", "/data/upload/1/../../admin", "   "]
CORRUPT = [str(DATA / "not_an_image.png"), str(DATA / "truncated.png"), str(DATA / "tone.wav")]


def test_hostile_urls_and_corrupt_media_fail_only_their_own_tasks(settings, backend):
    good_ids = [1, 2]
    tasks = [task(1, "a photo of a cat"), task(2, "a photo of a dog")]
    tasks += [task(10 + i, "a photo of a cat", image=ref) for i, ref in enumerate(BAD_URLS + CORRUPT)]
    tasks.insert(5, task(3, "a photo of a bus"))  # a good task in the middle of the bad ones
    good_ids.append(3)
    with client_for(settings, backend) as client:
        r = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": CONFIG})
        assert r.status_code == 200
        results = dict(zip([t["id"] for t in tasks], r.json()["results"]))
        assert all(results[i]["result"] and "pending" not in results[i]["model_version"] for i in good_ids)
        with backend.store.session() as s:
            items = repo.items_by_task_ids(s, project=repo.get_project(s, name="ls-7"), task_ids=[t["id"] for t in tasks])
            assert all(items[i].image_sha is not None for i in good_ids)
            assert all(items[t["id"]].image_sha is None for t in tasks if t["id"] not in good_ids)
        for ref in BAD_URLS[:12]:  # the same URLs as a /search query: a 4xx, never a 500
            answer = client.post("/search", json={"project": 7, "image": ref})
            assert 400 <= answer.status_code < 500, (ref, answer.status_code, answer.text)


def test_one_item_whose_fetch_raises_anything_is_that_items_error(settings):
    with MediaFetcher(settings) as fetcher:
        for ref in BAD_URLS[:12]:
            with pytest.raises(MediaError) as caught:
                fetcher.fetch(ref)
            assert caught.value.ref == ref


def test_the_token_refresh_never_follows_a_redirect_to_another_origin(settings):
    pat = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.sig"
    with recorder() as (elsewhere, stolen):
        def redirect(handler):
            handler.send_response(307)
            handler.send_header("Location", f"{elsewhere}/api/token/refresh/")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with recorder(redirect) as (ls_url, asked):
            ls = settings.with_label_studio(ls_url, pat)
            with MediaFetcher(ls) as fetcher:
                with pytest.raises(MediaError, match="redirected to another origin"):
                    fetcher.fetch("/data/upload/1/cat.png")
        assert [(m, p) for m, p, _ in asked] == [("POST", "/api/token/refresh/")]
    assert stolen == []  # the refresh token never left Label Studio's origin


def test_a_refresh_answer_that_is_not_json_fails_the_item_only(settings):
    pat = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.sig"

    def garbage(handler):
        body = b"\xff\xfe\xfa not json"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with recorder(garbage) as (ls_url, _):
        with MediaFetcher(settings.with_label_studio(ls_url, pat)) as fetcher:
            with pytest.raises(MediaError, match="without an access token"):
                fetcher.fetch("/data/upload/1/cat.png")


def test_an_unauthenticated_setup_cannot_point_a_project_at_an_internal_address(settings, backend):
    """Before #33 /setup's hostname became Label Studio's origin, exempt from the media policy: task
    media were fetched from any internal address it named, with the token it sent."""
    with recorder() as (internal, seen), client_for(settings, backend) as client:
        body = {"project": "7.1", "schema": CONFIG, "hostname": internal, "access_token": "attacker-token"}
        assert client.post("/setup", json=body).status_code == 200
        media = task(1, "a photo of a cat", image="/data/upload/../../admin/delete?all=1")
        results = client.post("/predict", json={"tasks": [media], "project": "7.1", "label_config": CONFIG})
        assert results.status_code == 200  # answered from the text; the image was not fetched
        with backend.store.session() as s:
            p = repo.get_project(s, name="ls-7")
            assert repo.items_by_task_ids(s, project=p, task_ids=[1])[1].image_sha is None
            assert not p.ls_access_trusted
            assert label_studio_settings(settings, p).label_studio_url is None  # no access to an internal address
        # a second /setup cannot re-point the registered project either
        client.post("/setup", json={**body, "hostname": "http://203.0.113.9", "access_token": "other"})
        with backend.store.session() as s:
            p = repo.get_project(s, name="ls-7")
            assert (p.ls_url, p.ls_access_token) == (internal, "attacker-token")
        # and an unauthenticated event does not make the trainer pull from it
        hint = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 7}})
        assert hint.status_code == 403
    assert seen == []


def test_an_internal_label_studio_is_reached_when_the_operator_allows_it(settings, backend):
    allowed = settings.model_copy(update={"media_allow_hosts": "127.0.0.1"})
    with recorder() as (ls_url, seen):
        with backend.store.session() as s:
            p = repo.get_or_create_project(s, name="ls-8")
            p.ls_url, p.ls_access_token = ls_url, "legacy"
        with backend.store.session() as s:
            p = repo.get_project(s, name="ls-8")
            told = label_studio_settings(allowed, p)
            assert told.label_studio_url == ls_url and not told.label_studio_trusted
            p.ls_access_trusted = True  # as `ls connect` stores it
            connected = label_studio_settings(settings, p)
        assert connected.label_studio_url == ls_url and connected.label_studio_trusted
        with MediaFetcher(told) as fetcher:
            assert fetcher.fetch("/data/upload/1/cat.png") == CAT
        with MediaFetcher(connected) as fetcher:
            assert fetcher.fetch("/data/upload/1/cat.png") == CAT
        assert [(m, p) for m, p, _ in seen] == [("GET", "/data/upload/1/cat.png")] * 2


def test_setup_behind_basic_auth_may_re_point_a_project(settings, encoders):
    secured = settings.model_copy(update={"basic_auth_user": "ls", "basic_auth_pass": SecretStr("pw")})
    store = open_store(secured)
    backend = Backend(secured, store=store, runtime=Runtime(secured, encoders=encoders))
    try:
        with client_for(secured, backend) as client:
            for host in ("http://127.0.0.1:8080", "http://127.0.0.1:8081"):
                r = client.post("/setup", auth=("ls", "pw"),
                                json={"project": 9, "schema": CONFIG, "hostname": host, "access_token": "t"})
                assert r.status_code == 200
        with store.session() as s:
            p = repo.get_project(s, name="ls-9")
            assert (p.ls_url, p.ls_access_trusted) == ("http://127.0.0.1:8081", True)
    finally:
        store.close()


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [100, 3000])
def test_nested_bodies_get_400_at_any_depth(settings, backend, depth):
    with client_for(settings, backend) as client:
        client.post("/setup", json={"project": 7, "schema": CONFIG})
        bodies = {
            "/webhook": '{"action": "ANNOTATION_CREATED", "project": {"id": 7}, "x": %s}' % _nested(depth),
            "/train": '{"project": %s}' % _nested(depth),
            "/predict": '{"project": 7, "tasks": [{"id": 1, "data": {"text": "a", "x": %s}}]}' % _nested(depth),
            "/setup": '{"project": 7, "schema": "<View/>", "extra_params": {"x": %s}}' % _nested(depth),
            "/search": '{"project": 7, "text": %s}' % _nested(depth, '"a"'),
        }
        for path, body in bodies.items():
            r = client.post(path, content=body, headers={"content-type": "application/json"},
                            params={} if path != "/webhook" else None)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        taxonomy = ('<View><Text name="t" value="$text"/><Taxonomy name="topic" toName="t">'
                    + '<Choice value="a">' * depth + "</Choice>" * depth + "</Taxonomy></View>")
        r = client.post("/setup", json={"project": 7, "schema": taxonomy})
        assert r.status_code == 400 and "nested" in r.json()["detail"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_database(request, settings):
    if request.param == "postgres":
        return settings.model_copy(update={"database_url": request.getfixturevalue("pg_database")})
    return settings


def test_a_string_longer_than_its_column_is_a_400_on_every_database(any_database, encoders):
    settings = any_database.model_copy(update={"webhook_secret": SecretStr("s")})
    store = open_store(settings)
    backend = Backend(settings, store=store, runtime=Runtime(settings, encoders=encoders))
    try:
        with client_for(settings, backend) as client:
            t = task(1, "a photo of a cat")
            event = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": CONFIG}, "task": t,
                     "annotation": {"id": 1, "task": 1, "completed_by": "x" * 250, "result": [
                         {"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": ["animal"]}}]}}
            r = client.post("/webhook", json=event, headers={"X-Annotator-Secret": "s"})
            assert r.status_code == 400 and "labels.created_by" in r.json()["detail"], r.text
            event["annotation"]["completed_by"] = 3
            assert client.post("/webhook", json=event, headers={"X-Annotator-Secret": "s"}).status_code == 200
        with store.session() as s:  # the good event stored its label; the long one nothing
            assert len(repo.live_annotations(s, project=repo.get_project(s, name="ls-7"))) == 1
        with pytest.raises(ValueTooLongError, match="projects.webhook_secret"):
            with store.session() as s:
                repo.get_project(s, name="ls-7").webhook_secret = "y" * 201
    finally:
        store.close()


def test_errors_name_no_server_path_and_no_other_project(settings, backend, tmp_path):
    with client_for(settings, backend) as client:
        for name in (11, 12):
            client.post("/setup", json={"project": name, "schema": CONFIG})
        r = client.post("/search", json={"project": 99, "text": "a cat"})
        assert r.status_code == 404 and "ls-11" not in r.text and "ls-12" not in r.text
        missing = str(tmp_path / "nowhere" / "missing.png")
        r = client.post("/search", json={"project": 11, "image": missing})
        assert r.status_code == 422
        assert str(tmp_path.resolve()) not in r.json()["detail"].replace(missing, "")

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from annotator.errors import MediaError
from annotator.media import MediaFetcher, load_audio, load_image
from tests.conftest import DATA


def _jwt(payload: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"eyJ{enc({'alg': 'none'})[3:]}.{enc(payload)}.sig"


PAT = _jwt({"token_type": "refresh", "exp": time.time() + 3600})
ACCESS = _jwt({"token_type": "access", "exp": time.time() + 24 * 3600})  # must not expire during a long test run


class _Handler(BaseHTTPRequestHandler):
    """Answers like Label Studio: media under /data/upload needs `Token legacy` or `Bearer <access>`;
    its presign endpoint redirects a task's cloud URI to the object. Also a flaky server (502 twice
    per path, then the image), one that always answers 502, and a slow one that counts how many
    requests it serves at once."""

    calls: list = []
    failures: dict = {}
    in_flight = peak = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(("POST", self.path))
        if self.path == "/api/token/refresh/" and body.get("refresh") == PAT:
            self._send(200, json.dumps({"access": ACCESS}).encode(), "application/json")
        else:
            self._send(401, b"{}", "application/json")

    def do_GET(self):
        type(self).calls.append(("GET", self.path))
        if self.path == "/big":
            self._send(200, b"x" * 5000, "application/octet-stream")
        elif self.path.startswith("/data/upload/"):
            if self.headers.get("Authorization") not in ("Token legacy", f"Bearer {ACCESS}"):
                self._send(401, b"unauthorized", "text/plain")
            else:
                self._send(200, (DATA / "cat.png").read_bytes(), "image/png")
        elif self.path == "/cat.png":
            self._send(200, (DATA / "cat.png").read_bytes(), "image/png")
        elif self.path.startswith("/tasks/5/presign/?fileuri="):
            uri = base64.urlsafe_b64decode(self.path.split("fileuri=", 1)[1]).decode()
            if self.headers.get("Authorization") != "Token legacy":
                self._send(401, b"unauthorized", "text/plain")
            elif uri == "s3://bucket/cat.png":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(404, b"no such object", "text/plain")
        elif self.path.startswith("/flaky/"):
            with type(self).lock:
                n = type(self).failures[self.path] = type(self).failures.get(self.path, 0) + 1
            if n <= 2:
                self._send(502, b"bad gateway", "text/plain")
            else:
                self._send(200, (DATA / "cat.png").read_bytes(), "image/png")
        elif self.path == "/always502":
            self._send(502, b"bad gateway", "text/plain")
        elif self.path.startswith("/slow/"):
            cls = type(self)
            with cls.lock:
                cls.in_flight += 1
                cls.peak = max(cls.peak, cls.in_flight)
            time.sleep(0.2)
            with cls.lock:
                cls.in_flight -= 1
            self._send(200, self.path.encode(), "text/plain")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetcher(settings, **update):
    """A fetcher for the loopback test server, which stands in for a host the operator allowed."""
    return MediaFetcher(settings.model_copy(update={"media_allow_hosts": "127.0.0.1", **update}))


def test_local_and_http_fetch_same_bytes(settings, server):
    with _fetcher(settings) as f:
        assert f.fetch(str(DATA / "cat.png"), trusted=True) == f.fetch(f"{server}/cat.png") == (DATA / "cat.png").read_bytes()
        assert f.fetch("cat.png", base_dir=DATA) == (DATA / "cat.png").read_bytes()


def test_http_404_names_url(settings, server):
    with _fetcher(settings) as f, pytest.raises(MediaError, match=r"missing.png: could not fetch: HTTP 404"):
        f.fetch(f"{server}/missing.png")


def test_size_limit_applies_to_http_and_local(settings, server):
    with _fetcher(settings, max_media_bytes=1000) as f:
        with pytest.raises(MediaError, match="over the limit of 1000"):
            f.fetch(f"{server}/big")
        with pytest.raises(MediaError, match="over the limit of 1000"):
            f.fetch(str(DATA / "cat.png"))


@pytest.mark.parametrize("key", ["legacy", PAT])
def test_labelstudio_upload_with_legacy_token_or_refreshed_pat(settings, server, key):
    from pydantic import SecretStr

    _Handler.calls.clear()
    with _fetcher(settings, label_studio_url=server, label_studio_api_key=SecretStr(key)) as f:
        assert f.fetch("/data/upload/1/cat.png")[:8] == b"\x89PNG\r\n\x1a\n"
        f.fetch("/data/upload/1/cat.png")
    refreshes = [c for c in _Handler.calls if c == ("POST", "/api/token/refresh/")]
    assert len(refreshes) == (1 if key == PAT else 0)  # access token reused until it expires


def test_transient_errors_are_retried_with_backoff_and_permanent_ones_are_not(settings, server):
    _Handler.calls.clear()
    with _fetcher(settings, media_retries=3, media_retry_wait_s=0.01) as f:
        assert f.fetch(f"{server}/flaky/a.png")[:8] == b"\x89PNG\r\n\x1a\n"  # two 502s, then the image
        with pytest.raises(MediaError, match=r"/gone.png: could not fetch: HTTP 404$"):
            f.fetch(f"{server}/gone.png")
    assert _Handler.calls.count(("GET", "/flaky/a.png")) == 3
    assert _Handler.calls.count(("GET", "/gone.png")) == 1  # a 404 will not get better
    with _fetcher(settings, media_retries=1, media_retry_wait_s=0.01) as f:
        with pytest.raises(MediaError, match=r"/always502: could not fetch: HTTP 502 \(after 2 attempts\)"):
            f.fetch(f"{server}/always502")
    with _fetcher(settings, media_retries=0) as f, pytest.raises(MediaError, match=r"after 1 attempt\)"):
        f.fetch(f"{server}/flaky/b.png")


def test_cloud_uris_resolve_through_label_studios_presign_endpoint(settings, server):
    from pydantic import SecretStr

    with _fetcher(settings, label_studio_url=server, label_studio_api_key=SecretStr("legacy")) as f:
        assert f.fetch("s3://bucket/cat.png", task_id=5) == (DATA / "cat.png").read_bytes()
        with pytest.raises(MediaError, match="HTTP 404"):
            f.fetch("s3://bucket/missing.png", task_id=5)
        with pytest.raises(MediaError, match="needs the task"):
            f.fetch("gs://bucket/cat.png")
    with _fetcher(settings) as f, pytest.raises(MediaError, match="ANNOTATOR_LABEL_STUDIO_URL"):
        f.fetch("azure-blob://container/cat.png", task_id=5)


def test_map_fetches_in_parallel_keeps_order_and_isolates_failures(settings, server):
    _Handler.peak = 0
    refs = [f"{server}/slow/{i}" for i in range(8)] + [f"{server}/gone.png"]
    with _fetcher(settings, media_parallel=4) as f:
        got = f.map(f.fetch, refs)
    assert [g.decode() for g in got[:8]] == [f"/slow/{i}" for i in range(8)]
    assert isinstance(got[8], MediaError) and "HTTP 404" in str(got[8])
    assert 2 <= _Handler.peak <= 4  # parallel, and bounded by media_parallel
    _Handler.peak = 0
    with _fetcher(settings, media_parallel=1) as f:
        f.map(f.fetch, refs[:3])
    assert _Handler.peak == 1


def test_labelstudio_wrong_key_and_missing_settings(settings, server):
    from pydantic import SecretStr

    with _fetcher(settings, label_studio_url=server, label_studio_api_key=SecretStr("wrong")) as f:
        with pytest.raises(MediaError, match="HTTP 401.*check the API key"):
            f.fetch("/data/upload/1/cat.png")
    with _fetcher(settings) as f, pytest.raises(MediaError, match="LABEL_STUDIO_URL"):
        f.fetch("/data/upload/1/cat.png")


def test_local_files_served_from_document_root(settings):
    with _fetcher(settings, local_files_document_root=DATA) as f:
        assert f.fetch("/data/local-files/?d=cat.png") == (DATA / "cat.png").read_bytes()


def test_image_decoding_errors_say_what_arrived():
    assert load_image((DATA / "coffee.jpg").read_bytes(), "coffee.jpg").size == (96, 72)
    with pytest.raises(MediaError, match="truncated.png: corrupt or truncated image"):
        load_image((DATA / "truncated.png").read_bytes(), "truncated.png")
    with pytest.raises(MediaError, match="not an image: content looks like text/plain"):
        load_image((DATA / "not_an_image.png").read_bytes(), "not_an_image.png")
    with pytest.raises(MediaError, match="not an image: content looks like audio/wav"):
        load_image((DATA / "tone.wav").read_bytes(), "tone.wav")


def test_audio_decoding_resamples_and_rejects_images():
    speech = load_audio((DATA / "cat_speech.wav").read_bytes(), "cat_speech.wav")
    assert speech.dtype == np.float32 and speech.ndim == 1
    tone = load_audio((DATA / "tone.wav").read_bytes(), "tone.wav", sample_rate=8000)
    assert tone.shape == (8000,)
    with pytest.raises(MediaError, match="not audio: content looks like image/png"):
        load_audio((DATA / "cat.png").read_bytes(), "cat.png")


def test_large_images_are_reduced_on_decoding_and_keep_their_aspect():
    """A chunk of 64 decoded phone photos held 2.3 GB; encoders see a few hundred pixels a side."""
    import io

    from PIL import Image

    from annotator.media import MAX_IMAGE_SIDE

    for mode, fmt in (("RGB", "JPEG"), ("P", "PNG")):
        buf = io.BytesIO()
        Image.new(mode, (4000, 3000), 7).save(buf, fmt)
        image = load_image(buf.getvalue(), f"photo.{fmt.lower()}")
        assert image.size == (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE * 3 // 4) and image.mode == "RGB"
    assert load_image((DATA / "coffee.jpg").read_bytes(), "coffee.jpg").size == (96, 72)  # small ones untouched


def test_a_jpeg_is_decoded_at_the_smallest_scale_covering_what_the_encoder_reads():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1000, 800), (200, 30, 30)).save(buf, "JPEG")
    assert load_image(buf.getvalue(), "photo.jpg", min_side=224).size == (500, 400)  # 1/4 would be under 224
    assert load_image(buf.getvalue(), "photo.jpg").size == (1000, 800)

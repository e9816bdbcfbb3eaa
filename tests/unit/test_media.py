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
    """Answers like Label Studio: media under /data/upload needs `Token legacy` or `Bearer <access>`."""

    calls: list = []

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
    return MediaFetcher(settings.model_copy(update=update))


def test_local_and_http_fetch_same_bytes(settings, server):
    with _fetcher(settings) as f:
        assert f.fetch(str(DATA / "cat.png")) == f.fetch(f"{server}/cat.png") == (DATA / "cat.png").read_bytes()
        assert f.fetch("cat.png", base_dir=DATA) == (DATA / "cat.png").read_bytes()


def test_http_404_names_url(settings, server):
    with _fetcher(settings) as f, pytest.raises(MediaError, match=r"HTTP 404 from .*/missing.png"):
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

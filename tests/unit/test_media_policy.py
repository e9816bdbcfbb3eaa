"""The media policy (#15): internal addresses, other schemes, paths outside the roots and the Label
Studio key's destination, probed as an attacker writing task data would. Loopback HTTP servers stand
in for internal services; a recorder asserts which requests reached them, and with which headers."""

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from annotator.errors import MediaError
from annotator.media import MediaFetcher
from annotator.media_policy import MediaNotAllowedError, MediaPolicy, origin
from tests.conftest import DATA


class _Recorder(BaseHTTPRequestHandler):
    """Serves the cat image at any path, except /redirect?to=URL; records (port, path, Authorization)."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen.append((self.server.server_address[1], self.path, self.headers.get("Authorization")))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (DATA / "cat.png").read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def servers():
    """Two loopback servers: ``ls`` plays Label Studio, ``internal`` a service on another port."""
    ls, internal = _serve(), _serve()
    yield {"ls": ls.server_address[1], "internal": internal.server_address[1]}
    ls.shutdown()
    internal.shutdown()


@pytest.fixture(autouse=True)
def _clear():
    _Recorder.seen.clear()


def _fetcher(settings, **update):
    return MediaFetcher(settings.model_copy(update=update))


@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{internal}/secret.png",
    "http://localhost:{internal}/secret.png",        # a name, checked on the address connected to
    "http://2130706433:{internal}/secret.png",      # 127.0.0.1 written as one number
    "http://[::ffff:127.0.0.1]:{internal}/x.png",   # IPv4-mapped IPv6
    "http://169.254.169.254/latest/meta-data/",     # cloud metadata: refused before any connection
    "http://10.1.2.3/x.png",
])
def test_internal_addresses_are_refused_before_connecting(settings, servers, template):
    with _fetcher(settings) as f, pytest.raises(MediaNotAllowedError, match="not allowed: .* private, loopback"):
        f.fetch(template.format(**servers))
    assert _Recorder.seen == []


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "/proc/self/environ", "/etc/hostname", "../../etc/passwd",
                                 "ftp://example.com/x.png", "gopher://127.0.0.1:70/_x", "dict://127.0.0.1:11211/"])
def test_other_schemes_and_paths_outside_the_roots_are_refused(settings, ref):
    with _fetcher(settings) as f, pytest.raises(MediaNotAllowedError, match="not allowed"):
        f.fetch(ref, base_dir=DATA)


def test_local_paths_inside_the_roots_and_the_operators_own_paths_are_read(settings, tmp_path):
    inside = tmp_path / "media" / "cat.png"
    inside.parent.mkdir()
    inside.write_bytes((DATA / "cat.png").read_bytes())
    os.symlink("/etc/hostname", tmp_path / "media" / "escape.png")  # a link out of the root is outside it
    with _fetcher(settings, media_roots=str(tmp_path / "media")) as f:
        assert f.fetch(str(inside)) == inside.read_bytes()
        with pytest.raises(MediaNotAllowedError, match="MEDIA_ROOTS"):
            f.fetch(str(tmp_path / "media" / "escape.png"))
        with pytest.raises(MediaNotAllowedError, match="MEDIA_ROOTS"):
            f.fetch(str(tmp_path / "media" / ".." / "elsewhere.png"))
        # an item the operator imported from the command line may name any file
        assert f.fetch(str(DATA / "cat.png"), trusted=True) == (DATA / "cat.png").read_bytes()


def test_label_studio_local_files_stay_inside_the_document_root(settings, tmp_path):
    os.symlink("/etc/hostname", tmp_path / "link.png")
    with _fetcher(settings, local_files_document_root=tmp_path) as f:
        for rel in ("../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "link.png"):
            with pytest.raises(MediaNotAllowedError, match="not allowed"):
                f.fetch(f"/data/local-files/?d={rel}")
        with pytest.raises(MediaError, match="file not found"):  # absolute means under the root, as in Label Studio
            f.fetch("/data/local-files/?d=/etc/hostname")


def test_the_key_goes_only_to_label_studios_exact_origin(settings, servers):
    ls_url = f"http://127.0.0.1:{servers['ls']}"
    other = f"http://127.0.0.1:{servers['internal']}"
    update = {"label_studio_url": ls_url, "label_studio_api_key": SecretStr("legacy"),
              "media_allow_hosts": "127.0.0.1"}  # the other port is allowed as media, but gets no key
    with _fetcher(settings, **update) as f:
        f.fetch("/data/upload/1/cat.png")
        f.fetch(f"{other}/data/upload/1/cat.png")
        f.fetch(f"{ls_url}/redirect?to={other}/after-redirect.png")  # a redirect off the origin drops it
    seen = {(port, path.split("?")[0]): auth for port, path, auth in _Recorder.seen}
    assert seen[(servers["ls"], "/data/upload/1/cat.png")] == "Token legacy"
    assert seen[(servers["internal"], "/data/upload/1/cat.png")] is None
    assert seen[(servers["internal"], "/after-redirect.png")] is None


def test_redirects_are_checked_at_every_hop(settings, servers):
    """Label Studio's origin is allowed although on loopback; a redirect from it to another internal
    port is not followed."""
    ls_url = f"http://127.0.0.1:{servers['ls']}"
    update = {"label_studio_url": ls_url, "label_studio_api_key": SecretStr("legacy")}
    with _fetcher(settings, **update) as f:
        assert f.fetch(f"{ls_url}/cat.png")[:4] == b"\x89PNG"
        for target in (f"http://127.0.0.1:{servers['internal']}/x.png", "file:///etc/passwd"):
            with pytest.raises(MediaNotAllowedError, match="not allowed"):
                f.fetch(f"{ls_url}/redirect?to={target}")
    assert [port for port, _, _ in _Recorder.seen] == [servers["ls"]] * 3


def test_refusals_tell_nothing_about_the_refused_address(settings, servers):
    with _fetcher(settings) as f, pytest.raises(MediaError) as refused:
        f.fetch(f"http://127.0.0.1:{servers['internal']}/admin")
    message = str(refused.value)
    assert "not allowed" in message and "HTTP" not in message and "image/png" not in message


def test_origins_compare_scheme_host_and_port_not_prefixes():
    ls = MediaPolicy(label_studio=origin("https://ls.corp"))
    assert ls.is_label_studio("https://ls.corp/data/upload/x.png")
    assert ls.is_label_studio("https://LS.corp:443/x.png")
    assert not ls.is_label_studio("https://ls.corp.attacker.net/x.png")
    assert not ls.is_label_studio("https://ls.corp:8443/x.png")
    assert not ls.is_label_studio("http://ls.corp/x.png")
    assert not ls.is_label_studio("https://ls.corp@attacker.net/x.png")

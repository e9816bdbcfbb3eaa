"""Media downloads through an HTTP proxy (ANNOTATOR_MEDIA_PROXY, or the environment's HTTP(S)_PROXY
with NO_PROXY): a real forwarding proxy on loopback, and the media policy applied to each target
before the request goes to it."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from annotator.errors import MediaError
from annotator.media import MediaFetcher, media_proxies
from tests.conftest import DATA

CAT = (DATA / "cat.png").read_bytes()


class _Origin(BaseHTTPRequestHandler):
    """The media host: /cat.png, and /to-loopback, a redirect to a loopback address."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/cat.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = CAT if self.path == "/cat.png" else b"not found"
        self.send_response(200 if self.path == "/cat.png" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Proxy(BaseHTTPRequestHandler):
    """A forwarding HTTP proxy: takes absolute-form requests, relays them (redirects included, as
    answers), and records every URL it was asked for."""

    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen.append(self.path)
        target = urlsplit(self.path)
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
        conn.request("GET", target.path or "/")
        answer = conn.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for name in ("Location", "Content-Type"):
            if answer.getheader(name):
                self.send_header(name, answer.getheader(name))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        conn.close()


def _serve(handler) -> tuple[ThreadingHTTPServer, int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, httpd.server_address[1]


@pytest.fixture(scope="module")
def hosts():
    origin, origin_port = _serve(_Origin)
    proxy, proxy_port = _serve(_Proxy)
    yield f"http://localhost:{origin_port}", f"http://127.0.0.1:{proxy_port}"
    origin.shutdown()
    proxy.shutdown()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    _Proxy.seen.clear()


def _fetcher(settings, **update) -> MediaFetcher:
    """The operator allows `localhost` (the media host stands in for an allowed one); the proxy is
    the operator's too, so its own loopback address needs no allowance. The environment's proxy
    variables count (the suite's `settings` turn them off)."""
    return MediaFetcher(settings.model_copy(update={"media_allow_hosts": "localhost", "media_proxy": "", **update}))


def test_downloads_go_through_the_configured_proxy(settings, hosts):
    origin, proxy = hosts
    with _fetcher(settings, media_proxy=proxy) as fetcher:
        assert fetcher.fetch(f"{origin}/cat.png") == CAT
    assert _Proxy.seen == [f"{origin}/cat.png"]


def test_the_policy_checks_the_target_before_the_proxy_sees_it(settings, hosts):
    origin, proxy = hosts
    loopback = origin.replace("localhost", "127.0.0.1")
    with _fetcher(settings, media_proxy=proxy) as fetcher:
        with pytest.raises(MediaError, match="not allowed: 127.0.0.1 is a private, loopback"):
            fetcher.fetch(f"{loopback}/cat.png")
        assert _Proxy.seen == []
        with pytest.raises(MediaError, match="not allowed: 127.0.0.1"):  # a redirect hop is checked too
            fetcher.fetch(f"{origin}/to-loopback")
        assert _Proxy.seen == [f"{origin}/to-loopback"]
        with pytest.raises(MediaError, match="does not resolve here, so its address cannot be checked"):
            fetcher.fetch("http://no-such-host.invalid/cat.png")
    assert _Proxy.seen == [f"{origin}/to-loopback"]


def test_the_environments_proxy_is_honoured_with_no_proxy_and_none_turns_it_off(settings, hosts, monkeypatch):
    origin, proxy = hosts
    monkeypatch.setenv("HTTP_PROXY", proxy)
    with _fetcher(settings) as fetcher:
        assert fetcher.fetch(f"{origin}/cat.png") == CAT
    assert _Proxy.seen == [f"{origin}/cat.png"]
    with _fetcher(settings, media_proxy="none") as fetcher:
        assert fetcher.fetch(f"{origin}/cat.png") == CAT
    monkeypatch.setenv("NO_PROXY", "example.org,localhost")
    with _fetcher(settings) as fetcher:
        assert fetcher.fetch(f"{origin}/cat.png") == CAT
    assert _Proxy.seen == [f"{origin}/cat.png"]  # neither went through the proxy


def test_proxy_settings_read_as_other_programs_read_them(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "10.1.2.3,.corp.example,ls.local")
    assert media_proxies("") == ({"https": "http://proxy:3128"},
                                 ["all://10.1.2.3", "all://*.corp.example", "all://*ls.local"])
    assert media_proxies("http://mine:8080")[0] == {"http": "http://mine:8080", "https": "http://mine:8080"}
    assert media_proxies("none") == ({}, [])
    monkeypatch.setenv("NO_PROXY", "*")
    assert media_proxies("") == ({}, [])

"""Fetch an item's media bytes and decode them, with size limits and clear per-item errors.

Supported references: local paths (absolute, relative to a base folder, ``file://``), ``http(s)``
URLs, Label Studio URLs (``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...``)
fetched from ``settings.label_studio_url`` with the configured key, and cloud-storage URIs
(``s3://``, ``gs://``, ``azure-blob://``) resolved through Label Studio's presign endpoint for the
task, as label-studio-sdk's ``get_local_path`` does. A legacy key is sent as ``Token <key>``; a
personal access token (a JWT) is first exchanged at ``/api/token/refresh/`` for a short-lived
access token sent as ``Bearer`` — Label Studio answers 401 to a PAT sent as-is.

What may be fetched at all (schemes, addresses, local folders, where the key goes) is
`annotator.media_policy`'s decision. Downloads are retried with exponential backoff on timeouts, connection errors, 429 and 5xx
(tenacity); `MediaFetcher.map` fetches many items at once on a bounded thread pool, so encoding
does not wait on one slow server round trip after another.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from annotator.config import Settings
from annotator.errors import MediaError
from annotator.media_policy import GuardedBackend, MediaNotAllowedError, MediaPolicy, origin

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}
TEXT_SUFFIXES = {".txt"}
LS_PREFIXES = ("/data/upload/", "/data/local-files", "/storage-data/")
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
T = TypeVar("T")
R = TypeVar("R")

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"), (b"RIFF", "riff"), (b"fLaC", "audio/flac"), (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"), (b"%PDF", "application/pdf"), (b"<svg", "image/svg+xml"),
    (b"<?xml", "text/xml"), (b"{", "application/json"),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff(data: bytes) -> str:
    """Best-effort content type from magic bytes, used to say what arrived instead."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            if kind == "riff":
                return "audio/wav" if data[8:12] == b"WAVE" else "image/webp" if data[8:12] == b"WEBP" else "riff"
            return kind
    if data[4:8] == b"ftyp":
        return "video/mp4-or-audio/m4a"
    try:
        data[:512].decode("utf-8")
        return "text/plain"
    except UnicodeDecodeError:
        return "application/octet-stream"


def is_remote(ref: str) -> bool:
    """True when ``ref`` is fetched over the network rather than read from disk."""
    return ref.startswith(("http://", "https://", *CLOUD_SCHEMES)) or ref.startswith(LS_PREFIXES)


def resolve_local(ref: str, base_dir: Path | None) -> Path:
    path = Path(unquote(ref[7:])) if ref.startswith("file://") else Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _is_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and token.startswith("eyJ")


def _jwt_exp(token: str) -> float:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except Exception:  # noqa: BLE001 - an opaque token simply has no known expiry
        return time.time() + 60


class LabelStudioAuth:
    """Builds the Authorization header for Label Studio, refreshing personal access tokens.

    The refresh request carries the personal access token in its body, so it goes only to Label
    Studio's exact origin, as the key itself does: a redirect is followed only while it stays on
    that origin (`origin`), and a redirect elsewhere is refused."""

    MAX_REDIRECTS = 3

    def __init__(self, base_url: str, api_key: str, client: httpx.Client):
        self.base_url, self.api_key, self._client = base_url.rstrip("/"), api_key, client
        self._access: str | None = None
        self._access_exp = 0.0
        self._lock = threading.Lock()

    def header(self) -> str:
        if not _is_jwt(self.api_key):
            return f"Token {self.api_key}"
        with self._lock:
            if self._access is None or time.time() > self._access_exp - 30:
                self._access = self._refresh()
                self._access_exp = _jwt_exp(self._access)
            return f"Bearer {self._access}"

    def _refresh(self) -> str:
        """A fresh access token for the personal access token; raises `MediaError` naming the endpoint."""
        url = endpoint = f"{self.base_url}/api/token/refresh/"
        for _ in range(self.MAX_REDIRECTS + 1):
            resp = self._client.post(url, json={"refresh": self.api_key}, follow_redirects=False)
            if not resp.is_redirect:
                break
            url = str(resp.next_request.url) if resp.next_request is not None else ""
            if origin(url) != origin(self.base_url):
                raise MediaError(endpoint, "Label Studio's token refresh redirected to another origin; the personal "
                                           "access token is sent only to Label Studio's own")
        else:
            raise MediaError(endpoint, f"Label Studio's token refresh redirected more than {self.MAX_REDIRECTS} times")
        if resp.status_code != 200:
            raise MediaError(endpoint, f"Label Studio refused the personal access token (HTTP {resp.status_code}); "
                                       "check ANNOTATOR_LABEL_STUDIO_API_KEY")
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError):  # not JSON (UnicodeDecodeError is a ValueError), or no token
            access = None
        if not isinstance(access, str) or not access:
            raise MediaError(endpoint, "Label Studio's token refresh answered without an access token")
        return access


class _Transient(MediaError):
    """A failure worth retrying: a timeout, a dropped connection, 429 or 5xx."""


class MediaFetcher:
    """Reads media bytes for item references; one instance per job (it pools connections and is
    safe to share between threads).

    Parameters
    ----------
    settings : Settings
        Supplies the size limit, timeout, retries, parallelism, Label Studio URL and key, and the
        local-files root.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.policy = MediaPolicy.from_settings(settings)
        connections = max(10, settings.media_parallel)
        proxies, bypass = media_proxies(settings.media_proxy)
        self._through_proxy = bool(proxies)
        mounts = {f"{scheme}://": httpx.HTTPTransport(proxy=url, limits=httpx.Limits(max_connections=connections))
                  for scheme, url in proxies.items()}
        mounts.update({pattern: None for pattern in bypass})  # None: the direct, guarded transport
        self._client = httpx.Client(timeout=settings.media_timeout_s, follow_redirects=True,
                                    transport=_guarded_transport(self.policy, connections), mounts=mounts,
                                    event_hooks={"request": [self._check_hop]})
        key = settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None
        self._ls_auth = (
            LabelStudioAuth(settings.label_studio_url, key, self._client)
            if settings.label_studio_url and key else None
        )
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> MediaFetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._client.close()

    def map(self, work: Callable[[T], R], inputs: Iterable[T]) -> list[R | MediaError]:
        """``work(x)`` for every input on up to ``settings.media_parallel`` threads, in input order;
        an input whose work raised `MediaError` gets that error in its place (one bad item fails
        alone)."""
        def guarded(x: T) -> R | MediaError:
            try:
                return work(x)
            except MediaError as exc:
                return exc

        inputs = list(inputs)
        if self.settings.media_parallel <= 1 or len(inputs) <= 1:
            return [guarded(x) for x in inputs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.media_parallel, thread_name_prefix="annotator-media")
        return list(self._pool.map(guarded, inputs))

    def fetch(self, ref: str, *, base_dir: Path | None = None, task_id: int | None = None,
              trusted: bool = False) -> bytes:
        """Return the bytes behind ``ref``; raise `MediaError` naming ``ref`` and the reason.
        ``task_id`` (the Label Studio task holding ``ref``) is needed for cloud-storage URIs.
        ``trusted``: the reference is the operator's own (a CLI import or query), so a local path
        may be read outside ``ANNOTATOR_MEDIA_ROOTS``.

        Any failure is this reference's `MediaError`, whatever raised it (an unparseable URL such as
        ``http://0177.0.0.1/``, an odd answer from Label Studio's token refresh): one bad task
        fails alone, never the batch it came in."""
        if not isinstance(ref, str) or not ref.strip():
            raise MediaError(repr(ref), "empty media reference")
        try:
            return self._fetch(ref, base_dir=base_dir, task_id=task_id, trusted=trusted)
        except MediaError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring; the type says what went wrong
            raise MediaError(ref, f"could not fetch: {type(exc).__name__}") from exc

    def _fetch(self, ref: str, *, base_dir: Path | None, task_id: int | None, trusted: bool) -> bytes:
        if ref.startswith(CLOUD_SCHEMES):
            return self._get(self._presign_url(ref, task_id), ref)
        if ref.startswith("/data/local-files") and self.settings.local_files_document_root:
            rel = parse_qs(urlparse(ref).query).get("d", [""])[0]
            return self._read_local(self.policy.local_files_path(unquote(rel), ref), ref)
        if ref.startswith(LS_PREFIXES):
            if not self.settings.label_studio_url:
                raise MediaError(ref, "a Label Studio URL needs ANNOTATOR_LABEL_STUDIO_URL (or LABEL_STUDIO_URL) set")
            return self._get(self.settings.label_studio_url.rstrip("/") + ref, ref)
        if "://" in ref[:20] and not ref.startswith("file://"):
            self.policy.check_url(ref, ref)
            return self._get(ref, ref)
        return self._read_local(self.policy.check_local(resolve_local(ref, base_dir), ref, trusted=trusted), ref)

    def _check_hop(self, request: httpx.Request) -> None:
        """Every request, redirects included: http(s) only, and the Label Studio key only on its
        exact origin (httpx already drops it when a redirect changes origin; this also covers a
        redirect back to another port of the same host). With a proxy, the proxy connects to the
        target, not `GuardedBackend`: the target's addresses are checked here, before it is sent
        (every request, so no reading of NO_PROXY can differ from httpx's)."""
        url = str(request.url)
        ref = request.extensions.get("annotator_ref", url)
        if not self._through_proxy:
            self.policy.check_url(url, ref)
        else:
            try:
                self.policy.check_host(url, ref)
            except OSError:  # unresolvable here, so its address cannot be known: the proxy may reach anything
                raise MediaNotAllowedError(ref, f"not allowed: {origin(url)[1]} does not resolve here, so its address "
                                                "cannot be checked before the proxy fetches it (list it in "
                                                "ANNOTATOR_MEDIA_ALLOW_HOSTS to allow it)") from None
        if not self.policy.is_label_studio(url):
            request.headers.pop("Authorization", None)

    def _presign_url(self, ref: str, task_id: int | None) -> str:
        """Label Studio's presign endpoint for a cloud URI in a task: it answers with the object (a
        redirect to a presigned URL, or the bytes), using the project's storage credentials."""
        if not self.settings.label_studio_url:
            raise MediaError(ref, "cloud storage URIs are fetched through Label Studio: set ANNOTATOR_LABEL_STUDIO_URL "
                                  "(or connect the project, so /setup tells us where Label Studio is)")
        if task_id is None:
            raise MediaError(ref, "cloud storage URIs are fetched through Label Studio's presign endpoint, which needs "
                                  "the task; import the task from Label Studio")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return f"{self.settings.label_studio_url.rstrip('/')}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"

    def _read_local(self, path: Path, ref: str) -> bytes:
        if not path.is_file():  # the reference, not the resolved path: no server folder in the message
            raise MediaError(ref, "file not found")
        size = path.stat().st_size
        if size > self.settings.max_media_bytes:
            raise MediaError(ref, f"file is {size} bytes, over the limit of {self.settings.max_media_bytes}")
        return path.read_bytes()

    def _get(self, url: str, ref: str) -> bytes:
        attempts, first_wait = self.settings.media_retries + 1, self.settings.media_retry_wait_s
        retrying = Retrying(stop=stop_after_attempt(attempts), reraise=True,
                            wait=wait_exponential(multiplier=first_wait, max=10.0) + wait_random(0, first_wait),
                            retry=retry_if_exception_type(_Transient))
        try:
            return retrying(self._get_once, url, ref)
        except _Transient as exc:
            raise MediaError(ref, f"{exc.reason} (after {attempts} attempt{'s' if attempts > 1 else ''})") from exc

    def _get_once(self, url: str, ref: str) -> bytes:
        headers = {}
        if self.policy.is_label_studio(url):
            if self._ls_auth is None:
                raise MediaError(ref, "Label Studio media needs ANNOTATOR_LABEL_STUDIO_API_KEY (or LABEL_STUDIO_API_KEY)")
            headers["Authorization"] = self._ls_auth.header()
        limit = self.settings.max_media_bytes
        try:
            with self._client.stream("GET", url, headers=headers, extensions={"annotator_ref": ref}) as resp:
                if resp.status_code != 200:
                    hint = " (check the API key)" if resp.status_code in (401, 403) else ""
                    error = _Transient if resp.status_code in RETRY_STATUS else MediaError
                    raise error(ref, f"could not fetch: HTTP {resp.status_code}{hint}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise MediaError(ref, f"response is {declared} bytes, over the limit of {limit}")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf.extend(chunk)
                    if len(buf) > limit:
                        raise MediaError(ref, f"response exceeds the limit of {limit} bytes")
                return bytes(buf)
        except MediaNotAllowedError as exc:  # raised while connecting, where only the host is known
            raise MediaNotAllowedError(ref, exc.reason) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(ref, f"could not fetch: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise MediaError(ref, f"could not fetch: {type(exc).__name__}") from exc


def media_proxies(setting: str) -> tuple[dict[str, str], list[str]]:
    """({scheme: proxy URL}, httpx mount patterns of the hosts that bypass it) for media downloads:
    ``setting`` (`Settings.media_proxy`) for both schemes, else the environment's HTTPS_PROXY,
    HTTP_PROXY and ALL_PROXY; NO_PROXY's hosts (and their subdomains, as curl reads them) go direct."""
    import urllib.request

    setting = setting.strip()
    if setting.lower() == "none":
        return {}, []
    env = urllib.request.getproxies_environment()  # lower-cased keys: http, https, all, no
    proxies = {"http": setting, "https": setting} if setting else \
        {scheme: env.get(scheme) or env.get("all") for scheme in ("http", "https")}
    bypass = []
    for entry in (h.strip() for h in env.get("no", "").split(",")):
        if entry == "*":
            return {}, []
        if entry:
            bypass.append(f"all://{entry}" if entry[0].isdigit() or entry[0] == "[" else f"all://*{entry}")
    return {k: v for k, v in proxies.items() if v}, bypass


def _guarded_transport(policy: MediaPolicy, max_connections: int) -> httpx.HTTPTransport:
    """httpx's transport with its connection pool connecting through `GuardedBackend`. httpx has no
    public hook for the network backend, so the pool is built here with httpx's own defaults.
    Downloads through a proxy use httpx's proxy transport instead (`MediaFetcher._check_hop`)."""
    import httpcore

    transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=max_connections))
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001 - see the docstring
        ssl_context=httpx.create_ssl_context(), max_connections=max_connections,
        max_keepalive_connections=20, keepalive_expiry=5.0, network_backend=GuardedBackend(policy))
    return transport


MAX_IMAGE_PIXELS = 40_000_000  # ≈ 6,300 × 6,300; encoders see 224 × 224, and a 109 KB PNG can claim 900 M
MAX_IMAGE_SIDE = 1024  # decoded images are reduced to this: a chunk of 64 phone photos held 2.3 GB, now 200 MB


class PixelBudget:
    """The pixels being decoded at once, over every media thread of the process. A full-size decode
    holds 3–4 bytes a pixel until the image is reduced: eight threads decoding 40-megapixel PNGs
    held 1.35 GB. Each decode waits until its pixels fit (one image larger than the whole budget
    waits for all the others to finish, then runs alone), so large images decode a few at a time
    and small ones as before. A Condition, not a semaphore: images take unequal shares."""

    def __init__(self, pixels: int):
        self.pixels, self._free, self._cond = pixels, pixels, threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.pixels)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._cond:
                self._free += pixels
                self._cond.notify_all()


DECODING = PixelBudget(MAX_IMAGE_PIXELS)  # one image at the limit at a time: ~500 MB while it decodes (RGBA)


@functools.cache
def return_large_buffers_to_the_os() -> None:
    """After each large free glibc raises its mmap threshold (up to 32 MB); full-size decodes then
    come from per-thread arenas, which keep the memory: eight media threads decoding 40-megapixel
    images one at a time still peaked at 1.7 GB. A fixed threshold (glibc's ``M_MMAP_THRESHOLD``)
    of 8 MB hands every larger buffer back as it is freed: 0.6 GB. Smaller buffers, and so the
    models' small tensors, keep glibc's usual reuse. Nothing happens on other C libraries."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_image(data: bytes, ref: str, *, min_side: int = MAX_IMAGE_SIDE):
    """Decode image bytes to an RGB PIL image of at most `MAX_IMAGE_SIDE` pixels a side (the
    encoders resize to a few hundred anyway; JPEGs are decoded at the reduced scale directly);
    truncated or non-image data, and images claiming more than `MAX_IMAGE_PIXELS` (decompression
    bombs: checked from the header, before decoding), raise `MediaError`. Full-size decodes share
    the process's `DECODING` budget.

    ``min_side``: the smallest side the caller needs (an encoder's ``input_side``): a JPEG is then
    decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers it (a 640 × 480 photo for a
    224-pixel network: half the decoding and a third of the resizing; vectors within 0.99 cosine)."""
    from PIL import Image

    return_large_buffers_to_the_os()
    try:
        # Image.open reads only the header; PIL itself refuses (DecompressionBombError) above twice its
        # own limit, and our lower one applies before any pixel is decoded
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaError(ref, f"image is {width} × {height} pixels, over the limit of "
                                      f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
            probe.verify()  # catches truncation and corrupt chunks cheaply
        image = Image.open(io.BytesIO(data))
        side = min(min_side, MAX_IMAGE_SIDE)
        image.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        with DECODING.hold(image.size[0] * image.size[1]):  # the size draft will decode at
            image.load()
            return _reduced_rgb(image)
    except Image.DecompressionBombError as exc:
        raise MediaError(ref, f"image is too large to decode safely: {exc}") from exc
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types (struct.error, IndexError...)
        kind = sniff(data)
        if kind.startswith("image/"):
            raise MediaError(ref, f"corrupt or truncated image ({kind}): {exc}") from exc
        raise MediaError(ref, f"not an image: content looks like {kind}") from exc


def _reduced_rgb(image):
    """RGB of at most `MAX_IMAGE_SIDE` a side, transparent parts on white. Reduced before the
    compositing, so the full-size copies are the RGBA conversion and the premultiplied one the
    reduction makes, not also a full-size background and composite."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")  # a palette image is resized only once it has real colours
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.BICUBIC)  # RGBA: premultiplied
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, "white")
        background.alpha_composite(image)
        image = background.convert("RGB")
    return image


def load_audio(data: bytes, ref: str, *, sample_rate: int = 16000, max_seconds: float = 600.0) -> np.ndarray:
    """Decode audio bytes to mono float32 at ``sample_rate``; undecodable data raises `MediaError`.
    Only the first ``max_seconds`` are decoded (a 25 MB FLAC can hold an hour: 9 GB as float32
    samples), and the encoders see far less than that."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            sr = audio.samplerate
            frames = min(audio.frames, int(max_seconds * sr)) if audio.frames > 0 else int(max_seconds * sr)
            samples = audio.read(frames, dtype="float32", always_2d=True).mean(axis=1)
    except Exception as sf_exc:  # noqa: BLE001 - libsndfile raises several types; fall back to av
        try:
            samples, sr = _decode_with_av(data, max_seconds)
        except Exception as av_exc:  # noqa: BLE001
            kind = sniff(data)
            what = "corrupt audio" if kind.startswith("audio/") else f"not audio: content looks like {kind}"
            raise MediaError(ref, f"{what} ({sf_exc}; {av_exc})") from av_exc
    if samples.size == 0:
        raise MediaError(ref, "audio has no samples")
    if sr != sample_rate:
        from scipy.signal import resample_poly

        g = np.gcd(int(sr), sample_rate)
        samples = resample_poly(samples, sample_rate // g, int(sr) // g).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_with_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        limit, frames, total = int(max_seconds * stream.rate), [], 0
        for frame in container.decode(stream):
            for f in resampler.resample(frame):
                frames.append(f.to_ndarray().reshape(-1))
                total += frames[-1].size
            if total >= limit:
                break
        return np.concatenate(frames)[:limit].astype(np.float32), int(stream.rate)

"""Fetch an item's media bytes and decode them, with size limits and clear per-item errors.

Supported references: local paths (absolute, relative to a base folder, ``file://``), ``http(s)``
URLs, Label Studio URLs (``/data/upload/...``, ``/data/local-files/?d=...``, ``/storage-data/...``)
fetched from ``settings.label_studio_url`` with the configured key, and cloud-storage URIs
(``s3://``, ``gs://``, ``azure-blob://``) resolved through Label Studio's presign endpoint for the
task, as label-studio-sdk's ``get_local_path`` does. A legacy key is sent as ``Token <key>``; a
personal access token (a JWT) is first exchanged at ``/api/token/refresh/`` for a short-lived
access token sent as ``Bearer`` — Label Studio answers 401 to a PAT sent as-is.

Downloads are retried with exponential backoff on timeouts, connection errors, 429 and 5xx
(tenacity); `MediaFetcher.map` fetches many items at once on a bounded thread pool, so encoding
does not wait on one slow server round trip after another.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import numpy as np
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from annotator.config import Settings
from annotator.errors import MediaError

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
    """Builds the Authorization header for Label Studio, refreshing personal access tokens."""

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
                resp = self._client.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self.api_key})
                if resp.status_code != 200:
                    raise MediaError(
                        f"{self.base_url}/api/token/refresh/",
                        f"Label Studio refused the personal access token (HTTP {resp.status_code}); "
                        "check ANNOTATOR_LABEL_STUDIO_API_KEY",
                    )
                self._access = resp.json()["access"]
                self._access_exp = _jwt_exp(self._access)
            return f"Bearer {self._access}"


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
        self._client = httpx.Client(timeout=settings.media_timeout_s, follow_redirects=True,
                                    limits=httpx.Limits(max_connections=max(10, settings.media_parallel)))
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

    def fetch(self, ref: str, *, base_dir: Path | None = None, task_id: int | None = None) -> bytes:
        """Return the bytes behind ``ref``; raise `MediaError` naming ``ref`` and the reason.
        ``task_id`` (the Label Studio task holding ``ref``) is needed for cloud-storage URIs."""
        if not isinstance(ref, str) or not ref.strip():
            raise MediaError(repr(ref), "empty media reference")
        if ref.startswith(CLOUD_SCHEMES):
            return self._get(self._presign_url(ref, task_id), ref, label_studio=True)
        if ref.startswith("/data/local-files") and self.settings.local_files_document_root:
            rel = parse_qs(urlparse(ref).query).get("d", [""])[0]
            return self._read_local(self.settings.local_files_document_root / unquote(rel), ref)
        if ref.startswith(LS_PREFIXES):
            if not self.settings.label_studio_url:
                raise MediaError(ref, "a Label Studio URL needs ANNOTATOR_LABEL_STUDIO_URL (or LABEL_STUDIO_URL) set")
            return self._get(self.settings.label_studio_url.rstrip("/") + ref, ref, label_studio=True)
        if ref.startswith(("http://", "https://")):
            ls = self.settings.label_studio_url
            return self._get(ref, ref, label_studio=bool(ls and ref.startswith(ls.rstrip("/"))))
        return self._read_local(resolve_local(ref, base_dir), ref)

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
        return f"{self.settings.label_studio_url.rstrip('/')}/tasks/{task_id}/presign/?fileuri={fileuri}"

    def _read_local(self, path: Path, ref: str) -> bytes:
        if not path.is_file():
            raise MediaError(ref, f"file not found: {path}")
        size = path.stat().st_size
        if size > self.settings.max_media_bytes:
            raise MediaError(ref, f"file is {size} bytes, over the limit of {self.settings.max_media_bytes}")
        return path.read_bytes()

    def _get(self, url: str, ref: str, *, label_studio: bool) -> bytes:
        attempts, first_wait = self.settings.media_retries + 1, self.settings.media_retry_wait_s
        retrying = Retrying(stop=stop_after_attempt(attempts), reraise=True,
                            wait=wait_exponential(multiplier=first_wait, max=10.0) + wait_random(0, first_wait),
                            retry=retry_if_exception_type(_Transient))
        try:
            return retrying(self._get_once, url, ref, label_studio=label_studio)
        except _Transient as exc:
            raise MediaError(ref, f"{exc.reason} (after {attempts} attempt{'s' if attempts > 1 else ''})") from exc

    def _get_once(self, url: str, ref: str, *, label_studio: bool) -> bytes:
        headers = {}
        if label_studio:
            if self._ls_auth is None:
                raise MediaError(ref, "Label Studio media needs ANNOTATOR_LABEL_STUDIO_API_KEY (or LABEL_STUDIO_API_KEY)")
            headers["Authorization"] = self._ls_auth.header()
        limit = self.settings.max_media_bytes
        try:
            with self._client.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    hint = " (check the API key)" if resp.status_code in (401, 403) else ""
                    error = _Transient if resp.status_code in RETRY_STATUS else MediaError
                    raise error(ref, f"HTTP {resp.status_code} from {url}{hint}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise MediaError(ref, f"response is {declared} bytes, over the limit of {limit}")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf.extend(chunk)
                    if len(buf) > limit:
                        raise MediaError(ref, f"response exceeds the limit of {limit} bytes")
                return bytes(buf)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(ref, f"download failed: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise MediaError(ref, f"download failed: {type(exc).__name__}: {exc}") from exc


MAX_IMAGE_PIXELS = 40_000_000  # ≈ 6,300 × 6,300; encoders see 224 × 224, and a 109 KB PNG can claim 900 M


def load_image(data: bytes, ref: str):
    """Decode image bytes to an RGB PIL image; truncated or non-image data, and images claiming more
    than `MAX_IMAGE_PIXELS` (decompression bombs: checked from the header, before decoding), raise
    `MediaError`."""
    from PIL import Image, UnidentifiedImageError

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
        image.load()
    except Image.DecompressionBombError as exc:
        raise MediaError(ref, f"image is too large to decode safely: {exc}") from exc
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        kind = sniff(data)
        if kind.startswith("image/"):
            raise MediaError(ref, f"corrupt or truncated image ({kind}): {exc}") from exc
        raise MediaError(ref, f"not an image: content looks like {kind}") from exc
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, "white")
            background.alpha_composite(image)
            image = background
        image = image.convert("RGB")
    return image


def load_audio(data: bytes, ref: str, *, sample_rate: int = 16000) -> np.ndarray:
    """Decode audio bytes to mono float32 at ``sample_rate``; undecodable data raises `MediaError`."""
    import soundfile as sf

    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    except Exception as sf_exc:  # noqa: BLE001 - libsndfile raises several types; fall back to av
        try:
            samples, sr = _decode_with_av(data)
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


def _decode_with_av(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        frames = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in resampler.resample(frame)]
        return np.concatenate(frames).astype(np.float32), int(stream.rate)

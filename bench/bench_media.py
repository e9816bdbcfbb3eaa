"""Fetching media like the anchors do: parallel, with retries, against a slow and flaky server.

A local HTTP server answers every request after 50 ms and fails 5 % of first attempts with 502 (a
flaky CDN or object store). Measured in one run:

- the baseline: one request after another, no retry (what annotator did before);
- ours: `MediaFetcher.map` on ``media_parallel`` threads, retrying timeouts, 429 and 5xx with backoff;
- and end to end: `Backend.predict` on tasks whose images sit on that server, counting tasks left
  without a prediction by a transient error (target: none).

Targets: parallel fetching ≥ 8× the sequential baseline; no lost prediction.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench._common import parser, timer, write_results

LATENCY_S = 0.05
FAIL_RATE = 0.05


class _SlowFlaky(BaseHTTPRequestHandler):
    """``/img/<n>.png``: a sample image after LATENCY_S; a seeded 5 % of paths fail their first attempt."""

    images: list[bytes] = []
    attempts: dict[str, int] = {}
    lock = threading.Lock()
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections, as against a real CDN

    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(LATENCY_S)
        with self.lock:
            n = self.attempts[self.path] = self.attempts.get(self.path, 0) + 1
        index = int(self.path.rsplit("/", 1)[-1].split(".")[0])
        if n == 1 and random.Random(index).random() < FAIL_RATE:
            body, code = b"bad gateway", 502
        else:
            body, code = self.images[index % len(self.images)], 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def fetch_section(base: str, settings, n: int, parallel: int) -> dict:
    from annotator.errors import MediaError
    from annotator.media import MediaFetcher

    refs = [f"{base}/img/{i}.png" for i in range(n)]
    _SlowFlaky.attempts.clear()
    sequential = settings.model_copy(update={"media_parallel": 1, "media_retries": 0})
    with MediaFetcher(sequential) as fetcher, timer() as t_seq:
        seq = fetcher.map(fetcher.fetch, refs)
    _SlowFlaky.attempts.clear()
    ours = settings.model_copy(update={"media_parallel": parallel, "media_retries": 3, "media_retry_wait_s": 0.05})
    with MediaFetcher(ours) as fetcher, timer() as t_ours:
        got = fetcher.map(fetcher.fetch, refs)
    return {"items": n, "latency_ms": 1000 * LATENCY_S, "first_attempt_fail_rate": FAIL_RATE, "parallel": parallel,
            "sequential_s": t_seq(), "sequential_failed": sum(isinstance(g, MediaError) for g in seq),
            "ours_s": t_ours(), "ours_failed": sum(isinstance(g, MediaError) for g in got),
            "speedup": t_seq() / t_ours(), "target_speedup": 8,
            "meets_target": bool(t_seq() / t_ours() >= 8 and not any(isinstance(g, MediaError) for g in got))}


def predict_section(base: str, settings, n: int) -> dict:
    from annotator.backend import Backend
    from annotator.runtime import Runtime
    from annotator.store import open_store

    config = ('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
              '<Choice value="a"/><Choice value="b"/></Choices></View>')
    _SlowFlaky.attempts.clear()
    tasks = [{"id": i + 1, "data": {"image": f"{base}/img/{10_000 + i}.png"}} for i in range(n)]
    store = open_store(settings)
    backend = Backend(settings, store=store, runtime=Runtime(settings))
    with timer() as t:
        backend.predict(tasks=tasks, project=1, label_config=config)
    failed_first = sum(1 for path, k in _SlowFlaky.attempts.items() if k > 1)
    with store.session() as s:
        from annotator.store import repo

        items = repo.list_items(s, project=repo.get_project(s, name="ls-1"))
        encoded = sum(1 for it in items if it.image_sha)
    backend.close()
    store.close()
    return {"tasks": n, "seconds": t(), "transient_failures_met": failed_first, "tasks_encoded": encoded,
            "tasks_lost": n - encoded, "meets_target": encoded == n}


def main() -> None:
    args = parser(__doc__).parse_args()
    n, n_predict, parallel = (80, 40, 16) if args.smoke else (800, 300, 16)
    from annotator.config import Settings
    from annotator.sample_data import SAMPLE_DIR

    _SlowFlaky.images = [p.read_bytes() for p in sorted((SAMPLE_DIR / "media").glob("*.png"))]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowFlaky)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        # the loopback server stands in for a remote media host: allowed as an operator allows a private one
        settings = Settings(data_dir=Path(tmp) / "data", media_retry_wait_s=0.05, media_allow_hosts="127.0.0.1")
        fetch = fetch_section(base, settings, n, parallel)
        print(f"fetch {n} images (50 ms each, 5 % 502 on first try): sequential {fetch['sequential_s']:.1f} s "
              f"({fetch['sequential_failed']} failed), ours {fetch['ours_s']:.2f} s ({fetch['ours_failed']} failed): "
              f"{fetch['speedup']:.1f}x")
        predict = predict_section(base, settings, n_predict)
        print(f"/predict {n_predict} image tasks on the flaky server: {predict['transient_failures_met']} transient "
              f"failures met, {predict['tasks_lost']} task(s) lost, {predict['seconds']:.1f} s")
    httpd.shutdown()
    write_results("bench_media" + ("_smoke" if args.smoke else ""), {"fetch": fetch, "predict": predict}, args.out)


if __name__ == "__main__":
    main()

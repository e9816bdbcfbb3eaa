"""A real Label Studio server for the integration tests.

Installed into its own virtualenv (``.cache/label-studio/venv``, git-ignored, reused between runs),
started on 127.0.0.1 with a throwaway data dir, an admin user and a legacy API token, loopback ML
backends allowed (``USE_DEFAULT_BANNED_SUBNETS=false``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "label-studio" / "venv"
VERSION = "1.23.2"
TOKEN = "annotator-test-token-0123456789"
USER, PASSWORD = "admin@example.com", "annotator-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> Path:
    exe = VENV / "bin" / "label-studio"
    if exe.exists():
        return exe
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"label-studio=={VERSION}"], check=True)
    return exe


class LabelStudioServer:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="annotator-ls-"))
        self.proc: subprocess.Popen | None = None
        self.token = TOKEN

    def start(self, timeout_s: float = 240) -> LabelStudioServer:
        exe = ensure_installed()
        env = {k: v for k, v in os.environ.items()
               if k not in ("USERNAME", "PASSWORD", "PORT", "HOST") and not k.startswith(("LABEL_STUDIO", "ANNOTATOR_"))}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir), "LABEL_STUDIO_USERNAME": USER,
            "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "USE_DEFAULT_BANNED_SUBNETS": "false",
            "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
            "LABEL_STUDIO_HOST": self.url,
        })
        self.log = open(self.data_dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited: {(self.data_dir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Label Studio did not answer on {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

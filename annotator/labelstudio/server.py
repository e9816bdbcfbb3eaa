"""Run a real Label Studio next to annotator: install it into its own virtualenv, start it on
127.0.0.1 with an admin user and a legacy API token, and allow a loopback ML backend.

Used by `annotator demo` and by the integration tests. Label Studio's first start runs its
migrations (~30 s); later starts on the same data dir take a few seconds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


def ensure_installed(venv: Path, *, quiet: bool = True) -> Path:
    """The ``label-studio`` executable in ``venv``, installing it there first if needed (minutes)."""
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", *(["-q"] if quiet else []), "--disable-pip-version-check",
                    f"label-studio=={LABEL_STUDIO_VERSION}"], check=True)
    return exe


class LabelStudioServer:
    """One Label Studio process.

    Parameters
    ----------
    venv : Path
        Where Label Studio is (or gets) installed.
    data_dir : Path, optional
        Its database and uploads; a temporary folder (removed on stop) when not given.
    user, password, token : str
        Created on the first start of a data dir; the token is the legacy API token.
    """

    def __init__(self, venv: Path, data_dir: Path | None = None, *, port: int | None = None,
                 user: str = "admin@example.com", password: str | None = None, token: str | None = None,
                 allow_local_backends: bool = True):
        self.venv = Path(venv)
        self.owns_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(__import__("tempfile").mkdtemp(prefix="annotator-ls-"))
        self.port = free_port(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.user = user
        self.password = password or secrets.token_urlsafe(12)
        self.token = token or secrets.token_hex(20)
        self.allow_local_backends = allow_local_backends
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> LabelStudioServer:
        exe = ensure_installed(self.venv)
        env = {k: v for k, v in os.environ.items()
               if k not in ("USERNAME", "PASSWORD", "PORT", "HOST") and not k.startswith(("LABEL_STUDIO", "ANNOTATOR_"))}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir), "LABEL_STUDIO_USERNAME": self.user,
            "LABEL_STUDIO_PASSWORD": self.password, "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "",
            "LABEL_STUDIO_HOST": self.url,
        })
        if self.allow_local_backends:  # else Label Studio refuses a backend on 127.0.0.1 with 403
            env["USE_DEFAULT_BANNED_SUBNETS"] = "false"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data_dir / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", "WARNING"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited; its log: {(self.data_dir / 'server.log').read_text()[-2000:]}")
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
        if self.owns_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

"""The container files: the compose stack's environment configures the backend as intended, the
image's health check works against a real backend, and the Dockerfile ships every package folder.
(No Docker engine runs on the test machines; `docker compose config` was run by hand.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import tomllib

import yaml

from tests.cli.test_cli import ROOT
from tests.integration.label_studio import free_port


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _substitute(value: str, given: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, from ``given``."""
    def one(m: re.Match) -> str:
        name, op, rest = m.group(1), m.group(2), m.group(3)
        if name in given and given[name]:
            return given[name]
        return rest if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, str(value))


def test_the_compose_environment_configures_the_backend(monkeypatch, settings):
    from annotator.config import load_settings

    services = _compose()["services"]
    assert services["label-studio"]["environment"]["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    backend_env = {k: _substitute(v, {"LABEL_STUDIO_API_KEY": "tok"}) for k, v in services["annotator"]["environment"].items()}
    host = re.match(r"http://([\w-]+):", backend_env["LABEL_STUDIO_URL"]).group(1)
    assert host in services  # Label Studio by service name
    for key in [k for k in os.environ if k.startswith("ANNOTATOR_")]:
        monkeypatch.delenv(key)
    for key, value in backend_env.items():
        monkeypatch.setenv(key, value)
    loaded = load_settings()
    assert loaded.database_url.startswith("postgresql+psycopg://") and "@db/" in loaded.database_url
    assert loaded.label_studio_url == "http://label-studio:8080"
    assert loaded.label_studio_api_key.get_secret_value() == "tok"
    assert loaded.log_level == "INFO" and loaded.basic_auth_user is None  # unset in compose: no basic auth
    assert loaded.webhook_secret is None  # unset: `ls connect` makes one per project
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.setenv("BASIC_AUTH_PASS", "p")
    assert load_settings().basic_auth_pass.get_secret_value() == "p"


def test_the_dockerfiles_ship_every_package_folder_and_run_unprivileged():
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for name in ("Dockerfile", "docker/Dockerfile.gpu"):
        text = (ROOT / name).read_text()
        copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
        assert {"annotator", *folders} <= copied, name
        assert re.search(r"^USER annotator$", text, re.M) and "HEALTHCHECK" in text and "EXPOSE 9090" in text


def test_the_image_health_check_passes_on_a_healthy_backend_and_fails_otherwise(settings, tmp_path):
    import uvicorn
    from pydantic import SecretStr

    from annotator.backends.app import create_app

    secured = settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": SecretStr("p")})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(secured, start_trainer=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def check(**env):
        clean = {k: v for k, v in os.environ.items() if "BASIC_AUTH" not in k}
        return subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py")], env={**clean, **env},
                              capture_output=True, text=True, timeout=30).returncode

    try:
        assert check(PORT=str(port), BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p") == 0
        assert check(PORT=str(port), ANNOTATOR_BASIC_AUTH_USER="u", ANNOTATOR_BASIC_AUTH_PASS="p") == 0
        assert check(PORT=str(port), BASIC_AUTH_USER="u", BASIC_AUTH_PASS="wrong") == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert check(PORT=str(port), BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p") == 1  # nothing listens any more

"""Session fixtures: one annotator backend (uvicorn, in this process so the session's loaded models
are reused) with a fast-polling trainer, wired to the session's Label Studio (tests/conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from annotator.config import Settings
from tests.integration.label_studio import free_port


@pytest.fixture(scope="session")
def ls_client(label_studio):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


class RunningBackend:
    """The served app's parts: ``backend`` and ``trainer`` (and their store and runtime)."""

    def __init__(self, app, url, settings):
        self.app, self.url, self.settings = app, url, settings

    @property
    def backend(self):
        return self.app.state.backend

    @property
    def trainer(self):
        return self.app.state.trainer

    @property
    def store(self):
        return self.backend.store

    @property
    def runtime(self):
        return self.backend.runtime


@pytest.fixture(scope="session")
def backend_server(label_studio, offline_encoders, tmp_path_factory):
    import uvicorn
    from pydantic import SecretStr

    from annotator.encoders.registry import Encoders
    from annotator.runtime import Runtime
    from annotator.backends.app import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("backend") / "data", label_studio_url=label_studio.url,
                        label_studio_api_key=SecretStr(label_studio.token))
    runtime = Runtime(settings, encoders=Encoders(settings, overrides=dict(offline_encoders)))
    # no background search: these tests follow one version at a time (tests/backend covers the search)
    app = create_app(settings, runtime=runtime, poll_s=0.2, debounce_s=2.0, debounce_labels=10_000, min_interval_s=3600,
                     background_search=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    yield RunningBackend(app, f"http://127.0.0.1:{port}", settings)
    server.should_exit = True
    thread.join(timeout=10)

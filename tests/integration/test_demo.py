"""`annotator demo` end to end, as the README's first command runs it (with --no-wait)."""

import json

import httpx
import pytest

from tests.cli.test_cli import run_cli
from tests.integration.label_studio import VENV

pytestmark = pytest.mark.integration


def test_demo_wires_label_studio_and_a_second_run_reuses_it(tmp_path):
    env = {"ANNOTATOR_DATA_DIR": str(tmp_path / "data"), "ANNOTATOR_LABEL_STUDIO_VENV": str(VENV)}
    first = json.loads(run_cli("demo", "--no-wait", "--json", "--port", "0", "--backend-port", "0",
                               env_extra=env, check=True).stdout)
    assert first["tasks"] == 48 and first["model_version"] == "v1"
    assert first["predictions_uploaded"] == 48 and first["metrics"]["accuracy"] > 0.5
    assert first["project_url"].startswith(first["label_studio_url"])
    with pytest.raises(httpx.HTTPError):  # both servers stopped with the command
        httpx.get(first["label_studio_url"] + "/health", timeout=2)

    second = json.loads(run_cli("demo", "--no-wait", "--json", "--port", "0", "--backend-port", "0",
                                env_extra=env, check=True).stdout)
    assert second["project"] == first["project"] and second["password"] == first["password"]
    assert second["predictions_uploaded"] == 0 and second["metrics"] is None  # nothing redone

"""The integration tests' Label Studio: the library's launcher with a venv cached in the repo
(``.cache/label-studio/venv``, git-ignored) and a throwaway data dir."""

from __future__ import annotations

from pathlib import Path

from annotator.labelstudio import server

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "label-studio" / "venv"
free_port = server.free_port


def LabelStudioServer(**options) -> server.LabelStudioServer:  # noqa: N802 - reads like the class it builds
    return server.LabelStudioServer(VENV, token="annotator-test-token-0123456789", **options)

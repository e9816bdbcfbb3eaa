#!/usr/bin/env bash
# Install annotator into .venv, then run its main job: `annotator demo` on the offline default models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e .
.venv/bin/annotator db upgrade  # a data dir from an earlier version: migrate its schema (no-op when current)
exec .venv/bin/annotator demo "$@"

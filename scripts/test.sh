#!/usr/bin/env bash
# Install annotator with its test extras into .venv, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k importer`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
# PostgreSQL server for the store tests; they skip, saying why, when it cannot be installed.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
      || echo "note: could not install postgresql; Postgres tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"

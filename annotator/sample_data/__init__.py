"""The bundled sample project: 48 emoji images with captions, half of them labelled (see ATTRIBUTION.md)."""

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent
SAMPLE_MANIFEST = SAMPLE_DIR / "items.jsonl"

"""Why the model predicted what it did, for one item, in terms a person can look at.

Occlusion sensitivity (Zeiler & Fergus, "Visualizing and understanding convolutional networks",
2014), which needs nothing from the model but its predictions, so it explains every model the
project may have chosen (logistic regression, kernel fusion, any fusion head) the same way: hide
one part of the item (a cell of a grid over the image, one word of the text, one segment of the
audio), encode the item again, and measure how much the predicted class's probability falls. A part
whose loss costs the prediction much is a part the prediction rests on. Beside it: the model's own
modality weights for the item and its top classes. A ``coattention`` model also shows its own
attention: how it pooled the image's regions and the text's tokens (its weights sum to one over
the parts). `annotator.report.draw_explanation` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotator.config import Settings
from annotator.embedding import load_features, usable_rows
from annotator.encoders.base import parts_key
from annotator.fusion.base import inputs_for
from annotator.errors import NotFoundError
from annotator.media import MediaFetcher, load_audio, load_image
from annotator.runtime import Runtime
from annotator.store import Store, repo

GRID = 7  # the image is hidden one cell of a GRID x GRID grid at a time
MAX_WORDS = 64
AUDIO_SEGMENTS = 10
TOP_CLASSES = 5


@dataclass
class Explanation:
    """One item's prediction and what it rests on; every weight is the fall in the predicted
    class's probability when that part is hidden (0: the part does not matter)."""

    item: str
    version: str
    label: str
    top_classes: list[tuple[str, float]]
    modality_weights: dict[str, float]
    image: Any = None  # the decoded PIL image
    image_heatmap: np.ndarray | None = None  # (GRID, GRID)
    words: list[tuple[str, float]] = field(default_factory=list)
    attention_image: np.ndarray | None = None  # coattention: (4, 4) attention over the image's regions
    attention_tokens: list[tuple[str, float]] = field(default_factory=list)  # coattention: per text token
    audio_segments: list[tuple[float, float, float]] = field(default_factory=list)  # (start s, end s, weight)

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item, "model_version": self.version, "label": self.label,
                "top_classes": [{"label": c, "probability": round(p, 4)} for c, p in self.top_classes],
                "modality_weights": {m: round(w, 4) for m, w in self.modality_weights.items()},
                "image_heatmap": None if self.image_heatmap is None else np.round(self.image_heatmap, 4).tolist(),
                "words": [{"word": w, "weight": round(v, 4)} for w, v in self.words],
                "audio_segments": [{"start_s": round(a, 2), "end_s": round(b, 2), "weight": round(v, 4)}
                                   for a, b, v in self.audio_segments],
                "attention_image": None if self.attention_image is None else np.round(self.attention_image, 4).tolist(),
                "attention_tokens": [{"token": t, "weight": round(v, 4)} for t, v in self.attention_tokens]}

    def summary(self) -> str:
        """A short explanation in words (what the backend can write into a TextArea)."""
        parts = [f"{self.label} ({self.top_classes[0][1]:.0%})"]
        parts.append("weights: " + ", ".join(f"{m} {w:.0%}" for m, w in self.modality_weights.items()))
        key_words = [w for w, v in sorted(self.words, key=lambda x: -x[1])[:3] if v > 0]
        if key_words:
            parts.append("words: " + ", ".join(key_words))
        if self.image_heatmap is not None and self.image_heatmap.max() > 0:
            r, c = np.unravel_index(int(self.image_heatmap.argmax()), self.image_heatmap.shape)
            parts.append(f"image region: {('top', 'middle', 'bottom')[min(2, 3 * r // GRID)]}-"
                         f"{('left', 'centre', 'right')[min(2, 3 * c // GRID)]}")
        return "; ".join(parts)


def explain_item(store: Store, settings: Settings, *, project_name: str, item_id: str, runtime: Runtime | None = None,
                 control: str | None = None) -> Explanation:
    """Explain the active model's prediction for one item (of ``control``: None is the primary)."""
    runtime = runtime or Runtime(settings)
    with store.session() as s:
        project = repo.get_project(s, name=project_name)
        model = runtime.active_model(s, project, control)
        if model is None:
            raise NotFoundError(f"project {project_name!r} has no active model yet; run `annotator retrain --project "
                                f"{project_name}`")
        [item] = repo.list_items(s, project=project, external_ids=[item_id])
        features = load_features([item], encoders=runtime.encoders, modalities=model.modalities,
                                 parts=model.uses_parts)
    if not features or not usable_rows(features, 1)[0]:
        raise NotFoundError(f"item {item_id!r} has no vector the model can use; run `annotator embed --project "
                            f"{project_name}`")
    clf = model.classifier
    X = inputs_for(clf, features)
    probs, shares = clf.predict_proba_and_contributions(X)
    order = np.argsort(-probs[0])
    target = int(order[0])
    base = float(probs[0, target])

    def loss(modality: str, variants: list) -> np.ndarray:
        """The predicted class's probability lost with each of ``variants`` (occluded copies of the
        item's ``modality``) in place of the item's own, encoded as the model reads them."""
        encoder = runtime.encoders.get(modality)
        if model.uses_parts and getattr(encoder, "n_parts", 0):
            vectors, parts = encoder.encode_parts(variants)
            replaced = {modality: vectors, parts_key(modality): parts.reshape(len(parts), -1)}
        else:
            replaced = {modality: encoder.encode(variants)}
        batch = {m: np.repeat(a, len(variants), axis=0) for m, a in X.items()}
        batch.update(replaced)
        return np.maximum(base - clf.predict_proba(batch)[:, target], 0.0)

    explanation = Explanation(item_id, model.version, clf.classes_[target],
                              [(clf.classes_[i], float(probs[0, i])) for i in order[:TOP_CLASSES]],
                              {m: float(w) for m, w in zip(clf.modalities_, shares[0])})
    present = {m for m in clf.modalities_ if m in features and not np.isnan(features[m][0]).any()}
    if model.uses_parts:
        _attention(explanation, clf.part_weights(X), item, runtime, present)
    if "text" in present:
        words = item.data["text"].split()[:MAX_WORDS]
        if len(words) > 1:
            variants = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
            explanation.words = list(zip(words, loss("text", variants).tolist()))
    if present & {"image", "audio"}:
        with MediaFetcher(settings) as fetcher:
            for modality in sorted(present & {"image", "audio"}):
                ref = item.data[modality]
                data = fetcher.fetch(ref, task_id=item.ls_task_id, trusted=item.ls_task_id is None)
                if modality == "image":
                    explanation.image = load_image(data, ref)
                    cells = occluded_images(explanation.image)
                    explanation.image_heatmap = loss("image", cells).reshape(GRID, GRID)
                else:
                    clip = load_audio(data, ref, max_seconds=settings.max_audio_s)
                    variants, bounds = occluded_clips(clip)
                    weights = loss("audio", variants)
                    explanation.audio_segments = [(a, b, float(w)) for (a, b), w in zip(bounds, weights)]
    return explanation


def _attention(explanation: Explanation, weights: dict[str, np.ndarray], item, runtime: Runtime, present: set) -> None:
    """The co-attention head's own pooling weights over the item's parts (part 0, the pooled
    vector, left out): the image's regions as their grid, the text's tokens by name."""
    from annotator.encoders.image import PART_GRID

    image = weights.get("image")
    if "image" in present and image is not None and image.shape[1] == 1 + PART_GRID * PART_GRID:
        explanation.attention_image = image[0, 1:].reshape(PART_GRID, PART_GRID)
    text = weights.get("text")
    tokens_of = getattr(runtime.encoders.get("text"), "token_strings", None) if "text" in present else None
    if text is not None and tokens_of is not None:
        tokens = tokens_of(item.data["text"])[: text.shape[1] - 1]
        explanation.attention_tokens = [(t, float(w)) for t, w in zip(tokens, text[0, 1:])]


def occluded_images(image) -> list:
    """The image once per grid cell, that cell filled with the image's mean colour."""
    from PIL import ImageDraw

    width, height = image.size
    mean = tuple(int(v) for v in np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0))
    out = []
    for r in range(GRID):
        for c in range(GRID):
            copy = image.copy()
            ImageDraw.Draw(copy).rectangle([c * width // GRID, r * height // GRID,
                                            (c + 1) * width // GRID, (r + 1) * height // GRID], fill=mean)
            out.append(copy)
    return out


def occluded_clips(clip: np.ndarray, sample_rate: int = 16000) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """The clip once per segment, that segment silenced; and each segment's (start s, end s)."""
    edges = np.linspace(0, len(clip), AUDIO_SEGMENTS + 1).astype(int)
    variants, bounds = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        silenced = clip.copy()
        silenced[a:b] = 0.0
        variants.append(silenced)
        bounds.append((a / sample_rate, b / sample_rate))
    return variants, bounds

"""Parse a Label Studio label config: which data fields are text/image/audio, and the
classification controls (each ``<Choices>`` and ``<Taxonomy>``) the fusion models predict.

A small XML reader rather than the SDK's LabelInterface: /setup must answer in well under 3 s and
this runs on every call.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from annotator.errors import AnnotatorError

OBJECT_MODALITIES = {"image": "image", "text": "text", "hypertext": "text", "paragraphs": "text",
                     "audio": "audio", "audioplus": "audio"}


class LabelConfigError(AnnotatorError, ValueError):
    """The label config is not valid XML or has nothing annotator can predict."""


@dataclass(frozen=True)
class ObjectTag:
    name: str
    tag: str
    modality: str
    value: str  # the task-data key, without "$"


PATH_SEPARATOR = " / "  # a Taxonomy path as one class name: "Animals / Mammal"


@dataclass(frozen=True)
class ClassificationControl:
    """A ``<Choices>`` or ``<Taxonomy>`` control: one classification question of the task.

    ``values`` are the class names a model learns (a Taxonomy node is its path joined by
    `PATH_SEPARATOR`); ``written`` maps a value to what a result holds for it (a Choice's alias, a
    Taxonomy path as a list); ``predicted`` maps what a result may hold back to the value.
    """

    name: str
    to_name: str
    tag: str  # "Choices" or "Taxonomy"
    multiple: bool
    values: tuple[str, ...]
    written: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, str] = field(default_factory=dict)

    @property
    def result_type(self) -> str:
        return self.tag.lower()

    def canonical(self, label: Any) -> str | None:
        """The value for a label read from a result (value, alias, predicted value, Taxonomy path)."""
        if isinstance(label, (list, tuple)):
            label = PATH_SEPARATOR.join(str(part) for part in label)
        label = str(label)
        if label in self.values:
            return label
        return self.predicted.get(label)

    def result_value(self, value: str) -> Any:
        """What a prediction should write for ``value``."""
        return self.written.get(value, value)

    def labels_from_result(self, result: list[dict[str, Any]]) -> list[str]:
        """This control's values in an annotation's result (aliases and paths mapped back)."""
        found = []
        for region in result or []:
            if not (isinstance(region, dict) and region.get("from_name") == self.name
                    and region.get("type") == self.result_type):
                continue
            for label in (region.get("value") or {}).get(self.result_type) or []:
                value = self.canonical(label)
                if value is not None and value not in found:
                    found.append(value)
        return found

    def region(self, labels: list[str], score: float) -> dict[str, Any]:
        """One prediction region for this control."""
        return {"from_name": self.name, "to_name": self.to_name, "type": self.result_type,
                "value": {self.result_type: [self.result_value(v) for v in labels]}, "score": float(score)}


@dataclass(frozen=True)
class TranscriptControl:
    """A ``<TextArea>``: on an audio object, pre-filled with the audio's Whisper transcript; the
    one named by ``ANNOTATOR_EXPLANATION_TEXTAREA``, with a short explanation of the prediction."""

    name: str
    to_name: str

    def region(self, text: str) -> dict[str, Any]:
        return {"from_name": self.name, "to_name": self.to_name, "type": "textarea", "value": {"text": [text]}}


@dataclass(frozen=True)
class LabelConfig:
    """What a label config asks: its data objects and the classification controls we predict.

    The first control (in document order) is the project's *primary* question: its labels drive
    active learning, label errors, agreement and search filters. Every control gets its own model;
    a control's labels and versions are stored under `control_key` (None for the primary).
    """

    objects: tuple[ObjectTag, ...]
    controls: tuple[ClassificationControl, ...] = ()
    transcripts: tuple[TranscriptControl, ...] = ()
    ignored_controls: tuple[str, ...] = ()  # "name (Tag)" of each control we do not predict
    digest: str = ""
    other_textareas: tuple[TranscriptControl, ...] = ()  # TextAreas not on audio
    explanation: TranscriptControl | None = None  # the one filled with explanations (`explaining`)

    def textarea(self, name: str | None) -> TranscriptControl | None:
        """The ``<TextArea>`` called ``name`` (not on audio: those hold transcripts), if any."""
        return next((t for t in self.other_textareas if t.name == name), None) if name else None

    def explaining(self, name: str | None) -> LabelConfig:
        """This config as the backend serves it when the ``<TextArea>`` ``name`` gets explanations:
        that TextArea counts among the predicted controls, not the ignored ones."""
        found = self.textarea(name)
        if found is None:
            return self
        return replace(self, explanation=found,
                       ignored_controls=tuple(c for c in self.ignored_controls if c != f"{found.name} (TextArea)"))

    @property
    def primary(self) -> ClassificationControl | None:
        return self.controls[0] if self.controls else None

    def control_key(self, control: ClassificationControl) -> str | None:
        """Where a control's labels and model versions are kept: None (the primary slot, shared with
        labels imported from a manifest) for the first control, else its name."""
        return None if self.primary is not None and control.name == self.primary.name else control.name

    @property
    def predicted_controls(self) -> list[str]:
        return [c.name for c in self.controls] + [t.name for t in self.transcripts] + \
            ([self.explanation.name] if self.explanation else [])

    @property
    def transcript_as_text(self) -> bool:
        """Audio without a text object: the transcript is the item's text (fusion, zero-shot, search)."""
        keys = self.data_keys()
        return "audio" in keys and "text" not in keys

    @property
    def wants_transcripts(self) -> bool:
        return bool(self.transcripts) or self.transcript_as_text

    def coverage_note(self) -> str | None:
        """What a person should know about which controls get pre-labels; None when all do."""
        if not self.predicted_controls:
            found = f" (it has {', '.join(self.ignored_controls)})" if self.ignored_controls else ""
            return ("nothing in this label config is predicted: annotator pre-labels <Choices> and <Taxonomy> "
                    f"controls and <TextArea>s on audio, and the config has none{found}; tasks get empty predictions")
        if self.ignored_controls:
            predicted = ", ".join([f"{c.name} ({c.tag})" for c in self.controls] +
                                  [f"{t.name} (TextArea: transcript)" for t in self.transcripts])
            return f"predicting {predicted}; not predicted: {', '.join(self.ignored_controls)}"
        return None

    def data_keys(self) -> dict[str, str]:
        """modality → task-data key (the first object tag of each modality)."""
        keys: dict[str, str] = {}
        for obj in self.objects:
            keys.setdefault(obj.modality, obj.value)
        return keys

    def item_data(self, task_data: dict[str, Any]) -> dict[str, Any]:
        """Our item data ({"text", "image", "audio"}) from a task's data."""
        out = {}
        for modality, key in self.data_keys().items():
            value = task_data.get(key)
            if isinstance(value, str) and value.strip():
                out[modality] = value
        return out

    def labels_from_result(self, result: list[dict[str, Any]]) -> list[str]:
        """The primary control's values in an annotation's result."""
        return self.primary.labels_from_result(result) if self.primary else []

    def region(self, labels: list[str], score: float) -> dict[str, Any]:
        """One prediction region for the primary control."""
        assert self.primary is not None
        return self.primary.region(labels, score)


def choice_values(result: list[dict[str, Any]], *, control: str | None = None) -> list[str]:
    """The chosen values in an annotation's result, from every ``choices`` region (or only from the
    control named ``control``): how a manifest import reads an exported annotation."""
    return [str(value) for region in result or [] if isinstance(region, dict) and region.get("type") == "choices"
            and (control is None or region.get("from_name") == control)
            for value in (region.get("value") or {}).get("choices", [])]


def parse_label_config(xml: str) -> LabelConfig:
    """Parse (cached by content) a label config string."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("empty label config")
    return _parse(hashlib.sha1(xml.encode()).hexdigest(), xml)


MAX_CONFIG_DEPTH = 64  # Label Studio's deepest taxonomies are a handful of levels; 3,000 overflowed the walk


@lru_cache(maxsize=256)  # keyed by content digest: a config string never changes meaning
def _parse(digest: str, xml: str) -> LabelConfig:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    if (depth := _depth(root)) > MAX_CONFIG_DEPTH:  # before any recursive walk (a Taxonomy's)
        raise LabelConfigError(f"label config is nested {depth} elements deep, over the limit of {MAX_CONFIG_DEPTH}")
    objects, controls, ignored, textareas = [], [], [], []
    for el in root.iter():
        tag = el.tag.lower()
        if tag in OBJECT_MODALITIES and el.get("name") and (el.get("value") or "").startswith("$"):
            objects.append(ObjectTag(el.get("name"), el.tag, OBJECT_MODALITIES[tag], el.get("value")[1:]))
        elif tag == "choices" and el.get("name"):
            controls.append(_choices(el))
        elif tag == "taxonomy" and el.get("name"):
            controls.append(_taxonomy(el))
        elif tag == "textarea" and el.get("name"):
            textareas.append(el)
        elif tag in ("labels", "textarea", "rectanglelabels", "polygonlabels", "brushlabels", "keypointlabels",
                     "ellipselabels", "relations", "rating", "number", "datetime", "ranker"):
            ignored.append(f"{el.get('name')} ({el.tag})" if el.get("name") else el.tag)
    if not objects:
        raise LabelConfigError("label config has no Image, Text or Audio object tag with a $value")
    names = [c.name for c in controls]
    if len(set(names)) != len(names):
        raise LabelConfigError(f"label config has two controls with the same name: {names}")
    audio = {o.name for o in objects if o.modality == "audio"}
    transcripts = [TranscriptControl(el.get("name"), _to_name(el)) for el in textareas if _to_name(el) in audio]
    others = [TranscriptControl(el.get("name"), _to_name(el)) for el in textareas if _to_name(el) not in audio]
    ignored += [f"{t.name} (TextArea)" for t in others]
    return LabelConfig(tuple(objects), tuple(controls), tuple(transcripts), tuple(ignored), digest, tuple(others))


def _depth(root: ET.Element) -> int:
    """How many elements deep the tree goes, counted without recursion."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        el, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in el)
    return deepest


def _to_name(el: ET.Element) -> str:
    return (el.get("toName") or "").split(",")[0]


def _choices(el: ET.Element) -> ClassificationControl:
    values, written, predicted = [], {}, {}
    for child in el.iter():
        if child.tag.lower() == "choice" and child.get("value") is not None:
            value = child.get("value")
            values.append(value)
            if child.get("alias"):
                written[value] = child.get("alias")
                predicted[child.get("alias")] = value
            for alt in (child.get("predicted_values") or "").split(","):
                if alt.strip():
                    predicted[alt.strip()] = value
    return ClassificationControl(el.get("name"), _to_name(el), el.tag, (el.get("choice") or "single") == "multiple",
                                 tuple(values), written, predicted)


def _taxonomy(el: ET.Element) -> ClassificationControl:
    """Every node of the tree is a class (its path); with ``leafsOnly`` only the leaves. Several
    paths per task only where ``maxUsages`` allows more than one (the data may still show several,
    and training then goes multi-label)."""
    values, written, predicted = [], {}, {}
    leafs_only = (el.get("leafsOnly") or "").lower() == "true"

    def walk(node: ET.Element, path: tuple[str, ...], shown: tuple[str, ...]) -> None:
        for child in node:
            if child.tag.lower() != "choice" or child.get("value") is None:
                continue
            here, here_shown = path + (child.get("value"),), shown + (child.get("alias") or child.get("value"),)
            value = PATH_SEPARATOR.join(here)
            if not (leafs_only and any(c.tag.lower() == "choice" for c in child)):
                values.append(value)
                written[value] = list(here_shown)
                predicted[PATH_SEPARATOR.join(here_shown)] = value
            walk(child, here, here_shown)

    walk(el, (), ())
    try:
        multiple = int(el.get("maxUsages") or 0) > 1
    except ValueError:
        multiple = False
    return ClassificationControl(el.get("name"), _to_name(el), el.tag, multiple, tuple(values), written, predicted)

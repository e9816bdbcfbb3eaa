"""Parse a Label Studio label config: which data fields are text/image/audio, and the Choices
control the fusion model predicts.

A small XML reader rather than the SDK's LabelInterface: /setup must answer in well under 3 s and
this runs on every call.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ChoicesControl:
    name: str
    to_name: str
    multiple: bool
    values: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)  # value -> alias written in results
    predicted: dict[str, str] = field(default_factory=dict)  # model label / alias -> value

    def canonical(self, label: str) -> str | None:
        """The Choice value for a label read from a result (value, alias or predicted value)."""
        if label in self.values:
            return label
        return self.predicted.get(label)

    def result_value(self, value: str) -> str:
        """What a prediction should write for Choice ``value`` (its alias when it has one)."""
        return self.aliases.get(value, value)


@dataclass(frozen=True)
class LabelConfig:
    objects: tuple[ObjectTag, ...]
    choices: ChoicesControl | None
    ignored_controls: tuple[str, ...] = ()  # "name (Tag)" of each control we do not predict
    digest: str = ""

    @property
    def predicted_controls(self) -> list[str]:
        return [self.choices.name] if self.choices is not None else []

    def coverage_note(self) -> str | None:
        """What a person should know about which controls get pre-labels; None when all do."""
        if self.choices is None:
            found = f" (it has {', '.join(self.ignored_controls)})" if self.ignored_controls else ""
            return ("nothing in this label config is predicted: annotator pre-labels a <Choices> control, and "
                    f"the config has none{found}; tasks get empty predictions")
        if self.ignored_controls:
            return (f"predicting <Choices> {self.choices.name!r} only; not predicted: "
                    f"{', '.join(self.ignored_controls)}")
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
        """Choice values of our control in an annotation's result (aliases mapped back)."""
        if self.choices is None:
            return []
        found = []
        for label in choice_values(result, control=self.choices.name):
            value = self.choices.canonical(str(label))
            if value is not None and value not in found:
                found.append(value)
        return found

    def region(self, labels: list[str], score: float) -> dict[str, Any]:
        """One prediction region for our Choices control."""
        assert self.choices is not None
        return {"from_name": self.choices.name, "to_name": self.choices.to_name, "type": "choices",
                "value": {"choices": [self.choices.result_value(v) for v in labels]}, "score": float(score)}


def choice_values(result: list[dict[str, Any]], *, control: str | None = None) -> list[str]:
    """The chosen values in an annotation's result, from every ``choices`` region (or only from the
    control named ``control``); the one place that reads Label Studio's result format."""
    return [str(value) for region in result or [] if isinstance(region, dict) and region.get("type") == "choices"
            and (control is None or region.get("from_name") == control)
            for value in (region.get("value") or {}).get("choices", [])]


def parse_label_config(xml: str) -> LabelConfig:
    """Parse (cached by content) a label config string."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("empty label config")
    return _parse(hashlib.sha1(xml.encode()).hexdigest(), xml)


@lru_cache(maxsize=256)  # keyed by content digest: a config string never changes meaning
def _parse(digest: str, xml: str) -> LabelConfig:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    objects, choices, ignored = [], None, []
    for el in root.iter():
        tag = el.tag.lower()
        if tag in OBJECT_MODALITIES and el.get("name") and (el.get("value") or "").startswith("$"):
            objects.append(ObjectTag(el.get("name"), el.tag, OBJECT_MODALITIES[tag], el.get("value")[1:]))
        elif tag == "choices" and el.get("name"):
            if choices is not None:
                ignored.append(f"{el.get('name')} ({el.tag})")
                continue
            values, aliases, predicted = [], {}, {}
            for child in el.iter():
                if child.tag.lower() == "choice" and child.get("value") is not None:
                    value = child.get("value")
                    values.append(value)
                    if child.get("alias"):
                        aliases[value] = child.get("alias")
                        predicted[child.get("alias")] = value
                    for alt in (child.get("predicted_values") or "").split(","):
                        if alt.strip():
                            predicted[alt.strip()] = value
            choices = ChoicesControl(el.get("name"), (el.get("toName") or "").split(",")[0],
                                     (el.get("choice") or "single") == "multiple", tuple(values), aliases, predicted)
        elif tag in ("labels", "textarea", "rectanglelabels", "polygonlabels", "brushlabels", "keypointlabels",
                     "taxonomy", "rating", "number"):
            ignored.append(f"{el.get('name')} ({el.tag})" if el.get("name") else el.tag)
    if not objects:
        raise LabelConfigError("label config has no Image, Text or Audio object tag with a $value")
    return LabelConfig(tuple(objects), choices, tuple(ignored), digest)

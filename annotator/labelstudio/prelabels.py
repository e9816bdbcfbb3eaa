"""Pre-labels for Label Studio tasks: one region per classification control of the label config,
each from that control's active model (or zero-shot before its first training), from cached vectors,
and the cached Whisper transcript for each ``<TextArea>`` on audio.

The one place that turns predictions into Label Studio's answer, for /predict and for every bulk
push (`annotator.labelstudio.sync`), and that prepares tasks for it (`prepare_items`: encode, and
transcribe where the config wants transcripts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from annotator.config import Settings
from annotator.embedding import EmbedReport, embed_items
from annotator.encoders.registry import Encoders
from annotator.labelstudio.label_config import ClassificationControl, LabelConfig
from annotator.labelstudio.tasks import project_config
from annotator.media import MediaFetcher
from annotator.prediction import UNTRAINED, predict_cached, serving_version
from annotator.runtime import ActiveModel, Runtime
from annotator.store import repo
from annotator.store.models import Item, Project
from annotator.transcripts import item_transcripts, transcribe_items

NO_QUESTION_SCORE = 0.5  # a task with only a transcript: no classification confidence to sort by


@dataclass(frozen=True)
class ServedControl:
    """A control and what answers it now (None: zero-shot on its class names)."""

    control: ClassificationControl
    model: ActiveModel | None


def served_controls(session, runtime: Runtime, project: Project, config: LabelConfig) -> list[ServedControl]:
    """Each classification control of ``config`` with its active model, primary first."""
    return [ServedControl(c, runtime.active_model(session, project, config.control_key(c))) for c in config.controls]


def served_version(served: Sequence[ServedControl]) -> str:
    """The model version Label Studio sees: the primary's (``v3``, ``zero-shot``, ``untrained``),
    then ``+<version>`` for each other control with a trained model (``v3+mood.v2``). It changes
    whenever any control's model does, so Label Studio asks again for every task."""
    return _compose([(s.control, s.model.version if s.model else None) for s in served])


def active_version(session, project: Project, config: LabelConfig) -> str:
    """`served_version` read from the database alone, without loading a model (for /setup)."""
    return _compose([(c, getattr(repo.active_model_version(session, project=project, control=config.control_key(c)),
                                 "version", None)) for c in config.controls])


def _compose(versions: Sequence[tuple[ClassificationControl, str | None]]) -> str:
    if not versions:
        return UNTRAINED
    (primary, version), *others = versions
    head = version or serving_version(None, primary.values)
    return head + "".join(f"+{v}" for _, v in others if v is not None)


def prepare_items(session, items: Sequence[Item], config: LabelConfig | None, *, settings: Settings,
                  encoders: Encoders, fetcher: MediaFetcher, progress: bool = False) -> EmbedReport:
    """Encode the tasks' media, then transcribe their audio where the config wants transcripts
    (``settings.transcribe``); the caller commits. Failures are reported per item."""
    report = embed_items(items, encoders=encoders, fetcher=fetcher, progress=progress)
    if config is not None and config.wants_transcripts and settings.transcribe != "off":
        transcribed = transcribe_items(session, items, encoders=encoders, fetcher=fetcher,
                                       as_text=config.transcript_as_text, progress=progress)
        report.failed += transcribed.failed
    return report


def prepare_project(store, settings: Settings, *, project_name: str, encoders: Encoders,
                    progress: bool = False) -> EmbedReport:
    """`prepare_items` for every task of a project (after a sync, before a bulk push)."""
    with store.session() as s:
        p = repo.get_project(s, name=project_name)
        items = repo.list_items(s, project=p)
        with MediaFetcher(settings) as fetcher:
            return prepare_items(s, items, project_config(p), settings=settings, encoders=encoders, fetcher=fetcher,
                                 progress=progress)


def transcripts_for(session, items: Sequence[Item], config: LabelConfig, *, encoders: Encoders) -> dict[int, str]:
    """Item id → cached transcript, where the config has a ``<TextArea>`` to pre-fill."""
    return item_transcripts(session, items, encoders=encoders) if config.transcripts else {}


def explanation_text(control: str, prediction) -> str:
    """One line a person can read beside a pre-label: what it says, how sure, and which modality
    it rests on (the model's own modality weights)."""
    weights = sorted(prediction.modality_weights.items(), key=lambda kv: -kv[1])
    rests_on = ", ".join(f"{m} {w:.0%}" for m, w in weights if w > 0)
    return f"{control}: {', '.join(prediction.labels)} ({prediction.score:.0%})" + (f", from {rests_on}" if rests_on else "")


def task_predictions(items: Sequence[Item], served: Sequence[ServedControl], *, encoders: Encoders,
                     config: LabelConfig | None = None, transcripts: dict[int, str] | None = None,
                     explanation_textarea: str | None = None) -> list[dict[str, Any] | None]:
    """Per item: ``{"result": [one region per control answered], "score": …}``, or None when no
    control could be answered (no usable vector, or a multi-label model that chose nothing). Items
    with a transcript (`transcripts_for`) also get one region per ``<TextArea>`` of ``config``. The
    ``<TextArea>`` named ``explanation_textarea`` (``ANNOTATOR_EXPLANATION_TEXTAREA``), where the
    config has it, gets `explanation_text` per control answered.

    The task's score is the lowest of its trained controls' scores (zero-shot ones only count when
    no control is trained): Label Studio's uncertainty sampling then shows first the tasks where
    some question is uncertain, not tasks made to look uncertain by an untrained question.
    """
    regions: list[list[tuple[dict[str, Any], bool]]] = [[] for _ in items]
    explained = config.textarea(explanation_textarea) if config else None
    why: list[list[str]] = [[] for _ in items]
    for s in served:
        classes = None if s.model is not None else s.control.values
        for row, pred in enumerate(predict_cached(items, encoders=encoders, model=s.model, classes=classes)):
            if pred is not None and pred.labels:
                regions[row].append((s.control.region(pred.labels, pred.score), s.model is not None))
                why[row].append(explanation_text(s.control.name, pred))
    out: list[dict[str, Any] | None] = []
    for item, found, lines in zip(items, regions, why):
        text = (transcripts or {}).get(item.id)
        written = [t.region(text) for t in (config.transcripts if config and text else ())]
        if explained is not None and lines:
            written.append(explained.region("\n".join(lines)))
        if not found and not written:
            out.append(None)
            continue
        trained = [r["score"] for r, is_trained in found if is_trained]
        scores = trained or [r["score"] for r, _ in found] or [NO_QUESTION_SCORE]
        out.append({"result": [r for r, _ in found] + written, "score": min(scores)})
    return out

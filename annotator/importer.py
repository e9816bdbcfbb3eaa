"""Import items from a manifest: JSONL, CSV, a folder of media, or a Label Studio tasks export.

Every bad line is reported with its line number and reason and the good lines still land; a
re-import updates items in place (matched by id) instead of duplicating them. Files are UTF-8
unless they start with a UTF-16 byte-order mark (the one encoding that can be told for sure) or the
caller names another: a line that does not decode is reported, the others still land.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from annotator.encoders.base import MODALITIES
from annotator.errors import AnnotatorError
from annotator.labelstudio.label_config import choice_values
from annotator.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, TEXT_SUFFIXES, is_remote, resolve_local, sha256
from annotator.store import repo


@dataclass
class ManifestRow:
    """One parsed manifest entry, before validation against the project."""

    line: int
    item_id: str | None
    text: str | None = None
    image: str | None = None
    audio: str | None = None
    labels: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    ls_task_id: int | None = None
    annotation_key: str | None = None


@dataclass
class RowError:
    line: int
    error: str


@dataclass
class ImportReport:
    imported: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "skipped": self.skipped}


class ManifestError(AnnotatorError, ValueError):
    """The manifest as a whole cannot be read (missing, unknown format)."""


# --- parsing --------------------------------------------------------------------------------

def read_manifest(path: Path, *, encoding: str | None = None) -> Iterator[ManifestRow | RowError]:
    """Yield one row (or one error) per manifest entry; the format is chosen from the path.
    ``encoding``: the file's text encoding when it is not UTF-8 (``cp1252``, ``latin-1``...)."""
    path = Path(path)
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ManifestError(f"unknown encoding {encoding!r}") from None
    if path.is_dir():
        yield from _read_folder(path, encoding)
    elif not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    elif path.suffix.lower() == ".csv":
        yield from _read_csv(path, encoding)
    elif path.suffix.lower() == ".json":
        yield from _read_labelstudio_export(path, encoding)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, encoding)
    else:
        raise ManifestError(f"manifest {path}: unknown format {path.suffix!r}; use .jsonl, .csv, .json or a folder")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of an undecodable byte


def _open_text(path: Path, encoding: str | None, newline: str = ""):
    """The file as text lines. Bytes the encoding cannot decode become lone surrogates
    (``surrogateescape``), so one bad line is found and reported by `_undecodable` while the rest
    parse normally, even inside a CSV's quoted multi-line field. ``newline="\\n"`` splits lines on
    LF alone (a stray CR in binary junk must not make two lines of one)."""
    if encoding is None:
        with path.open("rb") as fh:
            head = fh.read(4)
        encoding = "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    return path.open(encoding=encoding, errors="surrogateescape", newline=newline)


def _undecodable(text: str, encoding: str | None) -> str | None:
    """Why ``text`` did not decode (the first bad byte), or None when it did."""
    bad = _ESCAPED_BYTE.search(text)
    if bad is None:
        return None
    line, column = text.count("\n", 0, bad.start()) + 1, bad.start() - text.rfind("\n", 0, bad.start())
    where = f"line {line}, column {column}" if line > 1 else f"column {column}"
    return (f"not {encoding or 'UTF-8'} text (byte 0x{ord(bad.group()) - 0xDC00:02x} at {where}); if the file is "
            "in another encoding, import it with --encoding (e.g. cp1252)")


def _labels(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _row_from_mapping(line: int, obj: Any) -> ManifestRow | RowError:
    if not isinstance(obj, dict):
        return RowError(line, f"expected a JSON object, got {type(obj).__name__}")
    known = {"id", "text", "image", "audio", "label"}
    for key in ("text", "image", "audio"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return RowError(line, f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    item_id = obj.get("id")
    return ManifestRow(
        line=line,
        item_id=None if item_id in (None, "") else str(item_id),
        text=obj.get("text") or None, image=obj.get("image") or None, audio=obj.get("audio") or None,
        labels=_labels(obj.get("label")),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def _read_jsonl(path: Path, encoding: str | None) -> Iterator[ManifestRow | RowError]:
    with _open_text(path, encoding, newline="\n") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            problem = _undecodable(line, encoding)
            if problem:
                yield RowError(line_no, problem)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RowError(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            yield _row_from_mapping(line_no, obj)


def _read_csv(path: Path, encoding: str | None) -> Iterator[ManifestRow | RowError]:
    with _open_text(path, encoding) as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not set(reader.fieldnames) & {"text", "image", "audio"}:
            problem = _undecodable("".join(reader.fieldnames or []), encoding)
            raise ManifestError(f"manifest {path}: " + (f"header: {problem}" if problem else
                                "the CSV header needs at least one of text, image, audio"))
        for row in reader:
            values = {k: v for k, v in row.items() if k is not None}
            problem = _undecodable("".join(str(v) for v in values.values()), encoding)
            yield RowError(reader.line_num, problem) if problem else _row_from_mapping(reader.line_num, values)


def _guess_modality(key: str, value: Any) -> str | None:
    if key in MODALITIES:
        return key
    if not isinstance(value, str):
        return None
    suffix = Path(value.split("?")[0]).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return None if is_remote(value) else "text"


def _read_labelstudio_export(path: Path, encoding: str | None) -> Iterator[ManifestRow | RowError]:
    with _open_text(path, encoding) as fh:
        text = fh.read()
    problem = _undecodable(text, encoding)
    if problem:  # one JSON document: it cannot be parsed around a bad byte
        raise ManifestError(f"manifest {path}: {problem}")
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(tasks, list):
        raise ManifestError(f"manifest {path}: a Label Studio export is a JSON list of tasks")
    for index, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            yield RowError(index, "task has no 'data' object")
            continue
        row = ManifestRow(line=index, item_id=str(task["id"]) if "id" in task else None)
        if isinstance(task.get("id"), int):
            row.ls_task_id = task["id"]
        for key, value in task["data"].items():
            modality = _guess_modality(key, value)
            if modality and getattr(row, modality) is None:
                setattr(row, modality, value)
            else:
                row.extra[key] = value
        annotation = _latest_annotation(task.get("annotations") or [])
        if annotation is not None:
            row.labels = choice_values(annotation.get("result") or []) or None
            row.annotation_key = f"ls:{annotation['id']}" if "id" in annotation else None
        yield row


def _latest_annotation(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    live = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")]
    return max(live, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0), default=None)


def _read_folder(root: Path, encoding: str | None) -> Iterator[ManifestRow | RowError]:
    """Group files by path without suffix (cat/01.jpg + cat/01.txt = one item).

    Labels come from ``labels.csv`` (columns id,label) when present, else from the first
    sub-folder name (the ImageFolder convention) when every file sits in one.
    """
    groups: dict[str, dict[str, Path]] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = file.suffix.lower()
        modality = ("image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES
                    else "text" if suffix in TEXT_SUFFIXES else None)
        if modality is None:
            continue
        key = file.relative_to(root).with_suffix("").as_posix()
        groups.setdefault(key, {})[modality] = file
    labels_file = root / "labels.csv"
    labels: dict[str, str] = {}
    if labels_file.is_file():
        with _open_text(labels_file, encoding) as fh:
            labels = {r["id"]: r["label"] for r in csv.DictReader(fh)
                      if r.get("id") and not _undecodable(f"{r['id']}{r.get('label')}", encoding)}
    use_folders = not labels and groups and all("/" in key for key in groups)
    for line, (key, files) in enumerate(sorted(groups.items()), start=1):
        label = labels.get(key) or (key.split("/", 1)[0] if use_folders else None)
        try:
            text = files["text"].read_text(encoding=encoding or "utf-8").strip() if "text" in files else None
        except UnicodeDecodeError as exc:
            yield RowError(line, f"{files['text']}: not {encoding or 'UTF-8'} text (byte 0x{exc.object[exc.start]:02x} "
                                 f"at offset {exc.start}); import the folder with --encoding if it uses another")
            continue
        yield ManifestRow(
            line=line, item_id=key, text=text,
            image=str(files["image"]) if "image" in files else None,
            audio=str(files["audio"]) if "audio" in files else None,
            labels=_labels(label),
        )


# --- validation and writing -----------------------------------------------------------------

def _file_sha(ref: str, base_dir: Path) -> tuple[str, str | None]:
    """(stored reference, content hash): local files are made absolute and hashed now."""
    if is_remote(ref):
        return ref, None
    path = resolve_local(ref, base_dir)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return str(path.resolve()), h.hexdigest()


def import_manifest(session: Session, *, project_name: str, manifest: Path,
                    classes: list[str] | None = None, encoding: str | None = None) -> ImportReport:
    """Validate and store every row of ``manifest`` into project ``project_name``.

    Parameters
    ----------
    classes : list of str, optional
        Fix the project's label set; rows with other labels are skipped. Without it, a project
        with no fixed set accepts any label.
    encoding : str, optional
        The manifest's text encoding when it is neither UTF-8 nor UTF-16 with a byte-order mark.

    Returns
    -------
    ImportReport
        ``imported`` counts stored rows; ``skipped`` lists ``{"line", "error"}`` for the others.
    """
    manifest = Path(manifest)
    base_dir = manifest if manifest.is_dir() else manifest.parent
    project = repo.get_or_create_project(session, name=project_name)
    if classes:
        project.classes = list(dict.fromkeys(classes))
    allowed = set(project.classes) if project.classes else None

    report = ImportReport()
    records: list[repo.ItemRecord] = []
    pending_labels: list[tuple[str, list[str], str]] = []
    seen: dict[str, int] = {}
    for row in read_manifest(manifest, encoding=encoding):
        if isinstance(row, RowError):
            report.skipped.append({"line": row.line, "error": row.error})
            continue
        try:
            record = _validate(row, base_dir, allowed)
        except ValueError as exc:
            report.skipped.append({"line": row.line, "error": str(exc)})
            continue
        if record.external_id in seen:
            report.skipped.append({"line": row.line,
                                   "error": f"duplicate id {record.external_id!r} (first on line {seen[record.external_id]})"})
            continue
        seen[record.external_id] = row.line
        records.append(record)
        if row.labels:
            pending_labels.append((record.external_id, row.labels,
                                   row.annotation_key or f"import:{record.external_id}"))

    pk_by_id = repo.upsert_items(session, project=project, records=records)
    repo.upsert_labels(session, project=project, records=[
        repo.LabelRecord(item_pk=pk_by_id[ext], values=values, annotation_key=key, created_by="import")
        for ext, values, key in pending_labels
    ])
    report.imported = len(records)
    return report


def _validate(row: ManifestRow, base_dir: Path, allowed: set[str] | None) -> repo.ItemRecord:
    if not (row.text or row.image or row.audio):
        raise ValueError("no modality: the row has no text, image or audio")
    data: dict[str, Any] = dict(row.extra)
    hashes: dict[str, str | None] = {"text_sha": None, "image_sha": None, "audio_sha": None}
    if row.text:
        data["text"] = row.text
        hashes["text_sha"] = sha256(row.text.encode("utf-8"))
    for modality in ("image", "audio"):
        ref = getattr(row, modality)
        if ref:
            try:
                data[modality], hashes[f"{modality}_sha"] = _file_sha(ref, base_dir)
            except FileNotFoundError as exc:
                raise ValueError(f"{modality} file not found: {exc}") from None
    if row.labels and allowed is not None:
        unknown = [v for v in row.labels if v not in allowed]
        if unknown:
            raise ValueError(f"unknown label {unknown[0]!r}; the project's labels are {', '.join(sorted(allowed))}")
    item_id = row.item_id or "auto-" + sha256(
        json.dumps([row.text, row.image, row.audio], sort_keys=True).encode())[:16]
    return repo.ItemRecord(external_id=item_id, data=data, ls_task_id=row.ls_task_id, **hashes)

import json
import shutil

import pytest
from sqlalchemy import func, select

from annotator.importer import ManifestError, import_manifest
from annotator.store import repo
from annotator.store.models import Item, Label
from tests.conftest import DATA


def _counts(store):
    with store.session() as s:
        return (s.scalar(select(func.count()).select_from(Item)),
                s.scalar(select(func.count()).select_from(Label)))


def _run(store, manifest, **kw):
    with store.session() as s:
        return import_manifest(s, project_name="p", manifest=manifest, **kw)


def test_jsonl_with_bad_lines_reports_each_and_keeps_the_rest(store, tmp_path):
    shutil.copy(DATA / "cat.png", tmp_path / "cat.png")
    lines = [
        json.dumps({"id": "1", "text": "a cat", "image": "cat.png", "label": "cat"}),
        "{not json",
        json.dumps({"id": "2", "image": "missing.png"}),
        json.dumps({"id": "3"}),
        json.dumps({"id": "4", "text": "a dog", "label": "dog"}),
        json.dumps({"id": "1", "text": "dup"}),
        json.dumps({"id": "5", "text": 7}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    report = _run(store, tmp_path / "m.jsonl")
    assert report.imported == 2
    errors = {s["line"]: s["error"] for s in report.skipped}
    assert set(errors) == {2, 3, 4, 6, 7}
    assert "invalid JSON" in errors[2]
    assert "image file not found" in errors[3] and "missing.png" in errors[3]
    assert "no modality" in errors[4]
    assert "duplicate id '1'" in errors[6]
    assert "'text' must be a string" in errors[7]
    assert _counts(store) == (2, 2)
    # a re-run changes nothing
    again = _run(store, tmp_path / "m.jsonl")
    assert again.imported == 2 and _counts(store) == (2, 2)
    with store.session() as s:
        item = repo.list_items(s, project=repo.get_project(s, name="p"), external_ids=["1"])[0]
        assert item.data["image"] == str((tmp_path / "cat.png").resolve())
        assert item.image_sha and item.text_sha


def test_reimport_updates_in_place(store, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "text": "old", "label": "x"}) + "\n")
    _run(store, m)
    m.write_text(json.dumps({"id": "a", "text": "new", "label": "y"}) + "\n")
    _run(store, m)
    with store.session() as s:
        p = repo.get_project(s, name="p")
        [item] = repo.list_items(s, project=p)
        assert item.data["text"] == "new"
        assert repo.current_labels(s, project=p) == {item.id: ["y"]}
    assert _counts(store) == (1, 1)


def test_unknown_label_is_skipped_when_classes_are_fixed(store, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("id,text,label\n1,a cat,cat\n2,a bird,bird\n")
    report = _run(store, m, classes=["cat", "dog"])
    assert report.imported == 1
    assert report.skipped == [{"line": 3, "error": "unknown label 'bird'; the project's labels are cat, dog"}]


def test_folder_groups_modalities_and_uses_subfolder_labels(store, tmp_path):
    for label, img in (("cat", "cat.png"), ("coffee", "coffee.jpg")):
        (tmp_path / label).mkdir()
        shutil.copy(DATA / img, tmp_path / label / ("01" + img[-4:]))
        (tmp_path / label / "01.txt").write_text(f"a photo of {label}")
    shutil.copy(DATA / "cat_speech.wav", tmp_path / "cat" / "01.wav")
    report = _run(store, tmp_path)
    assert report.imported == 2 and report.skipped == []
    with store.session() as s:
        p = repo.get_project(s, name="p")
        items = {i.external_id: i for i in repo.list_items(s, project=p)}
        assert set(items) == {"cat/01", "coffee/01"}
        assert set(items["cat/01"].data) == {"text", "image", "audio"}
        labels = repo.current_labels(s, project=p)
        assert labels[items["coffee/01"].id] == ["coffee"]


def test_labelstudio_export_takes_latest_live_annotation(store, tmp_path):
    export = [
        {"id": 11, "data": {"image": "/data/upload/1/cat.png", "caption": "a cat"},
         "annotations": [
             {"id": 5, "was_cancelled": False, "updated_at": "2026-01-01",
              "result": [{"type": "choices", "value": {"choices": ["Dog"]}}]},
             {"id": 6, "was_cancelled": False, "updated_at": "2026-02-01",
              "result": [{"type": "choices", "value": {"choices": ["Cat"]}}]},
             {"id": 7, "was_cancelled": True, "updated_at": "2026-03-01", "result": []}]},
        {"id": 12, "data": {"text": "no annotations"}},
        {"id": 13},
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    report = _run(store, tmp_path / "export.json")
    assert report.imported == 2
    assert report.skipped == [{"line": 3, "error": "task has no 'data' object"}]
    with store.session() as s:
        p = repo.get_project(s, name="p")
        items = {i.external_id: i for i in repo.list_items(s, project=p)}
        assert items["11"].ls_task_id == 11
        assert items["11"].data["image"] == "/data/upload/1/cat.png"
        assert items["11"].data["text"] == "a cat"
        assert repo.current_labels(s, project=p) == {items["11"].id: ["Cat"]}


def test_missing_and_unknown_manifests_are_refused(store, tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        _run(store, tmp_path / "nope.jsonl")
    (tmp_path / "m.xml").write_text("<x/>")
    with pytest.raises(ManifestError, match="unknown format"):
        _run(store, tmp_path / "m.xml")


def test_undecodable_lines_are_reported_and_the_good_ones_land(store, tmp_path):
    """#15: a JSONL with one binary line, or a Latin-1 CSV, was a UnicodeDecodeError traceback and
    lost every good line."""
    good = [json.dumps({"id": str(i), "text": f"caf\u00e9 number {i}", "label": "x"}).encode() for i in range(3)]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join([good[0], b"\x89PNG\r\x1a\x00\xff\xfe binary", good[1], good[2]]) + b"\n")
    report = _run(store, tmp_path / "m.jsonl")
    assert report.imported == 3
    assert [s["line"] for s in report.skipped] == [2] and "not UTF-8 text (byte 0x89" in report.skipped[0]["error"]

    rows = "id,text,label\n1,caf\u00e9 cr\u00e8me,food\n2,\"two\nlines\",food\n3,na\u00efve,food\n"
    (tmp_path / "latin1.csv").write_bytes(rows.encode("latin-1"))
    with store.session() as s:
        report = import_manifest(s, project_name="csv", manifest=tmp_path / "latin1.csv")
    assert report.imported == 1  # the multi-line ASCII row; the others name their line and the option
    assert [s["line"] for s in report.skipped] == [2, 5] and all("--encoding" in s["error"] for s in report.skipped)
    with store.session() as s:
        report = import_manifest(s, project_name="csv", manifest=tmp_path / "latin1.csv", encoding="cp1252")
        texts = sorted(i.data["text"] for i in repo.list_items(s, project=repo.get_project(s, name="csv")))
    assert report.imported == 3 and not report.skipped
    assert texts == ["caf\u00e9 cr\u00e8me", "na\u00efve", "two\nlines"]

    (tmp_path / "utf16.csv").write_bytes(rows.encode("utf-16"))  # Excel's "Unicode text": the BOM says so
    with store.session() as s:
        assert import_manifest(s, project_name="u16", manifest=tmp_path / "utf16.csv").imported == 3
    with store.session() as s, pytest.raises(ManifestError, match="unknown encoding"):
        import_manifest(s, project_name="csv", manifest=tmp_path / "latin1.csv", encoding="klingon")

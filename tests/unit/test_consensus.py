"""Many annotators (#19, part 4): consensus, Dawid–Skene, agreement, on synthetic annotators of known
accuracy and through a real store and the CLI."""

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from annotator.consensus import (
    Annotation,
    DawidSkene,
    _latest_per_annotator,
    agreement_report,
    consensus,
    krippendorff_alpha,
    majority_vote,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _crowd(accuracies, n_items=300, per_item=3, classes=("a", "b", "c", "d"), seed=0):
    """Items with a true class, each labelled by ``per_item`` random annotators who are right with
    their accuracy and otherwise pick a wrong class at random."""
    rng = np.random.default_rng(seed)
    truth = {i: classes[rng.integers(len(classes))] for i in range(n_items)}
    annotations, t = [], 0
    for item, true in truth.items():
        for who in rng.choice(len(accuracies), per_item, replace=False):
            label = true if rng.random() < accuracies[who] else rng.choice([c for c in classes if c != true])
            annotations.append(Annotation(item, f"annotator-{who}", (str(label),), T0 + timedelta(seconds=t)))
            t += 1
    return truth, annotations


def test_dawid_skene_recovers_the_annotators_ranking_and_beats_the_vote():
    accuracies = [0.95, 0.8, 0.65, 0.5, 0.35]
    truth, annotations = _crowd(accuracies, n_items=1000)
    by_item = _latest_per_annotator(annotations)
    assert DawidSkene.enough_overlap(by_item)
    ds = DawidSkene().fit(by_item)
    estimated = [ds.accuracy_[f"annotator-{j}"] for j in range(len(accuracies))]
    observed = [np.mean([a.labels[0] == truth[a.item] for a in annotations if a.annotator == f"annotator-{j}"])
                for j in range(len(accuracies))]
    assert np.argsort(estimated).tolist() == np.argsort(accuracies).tolist()
    assert max(abs(e - o) for e, o in zip(estimated, observed)) < 0.08  # learnt without seeing the truth
    vote, weighed = majority_vote(by_item), consensus(annotations)
    right = lambda labels: np.mean([labels[i] == [truth[i]] for i in truth])  # noqa: E731
    assert right(weighed) > right(vote) + 0.03 and right(weighed) > 0.8


def test_votes_ties_multilabel_and_each_annotators_latest():
    at = [T0 + timedelta(minutes=m) for m in range(10)]
    annotations = [
        Annotation(1, "ann", ("cat",), at[0]), Annotation(1, "bob", ("dog",), at[1]), Annotation(1, "cy", ("cat",), at[2]),
        Annotation(2, "ann", ("cat",), at[0]), Annotation(2, "bob", ("dog",), at[3]),  # a tie: the latest wins
        Annotation(3, "ann", ("dog",), at[0]), Annotation(3, "ann", ("cat",), at[4]),  # one annotator changed their mind
        Annotation(4, "ann", ("cat", "indoor"), at[0]), Annotation(4, "bob", ("cat",), at[5]),  # multi-label: per label
        Annotation(4, "cy", ("cat", "indoor"), at[6]),
    ]
    labels = consensus(annotations)
    assert labels == {1: ["cat"], 2: ["dog"], 3: ["cat"], 4: ["cat", "indoor"]}
    report = agreement_report(annotations)
    assert report["method"] == "majority vote"  # too little overlap to learn reliabilities
    assert report["disagreements"] == [2, 1, 4]  # the most contested first
    assert report["item_agreement"][3] == 1.0 and report["item_agreement"][2] == 0.5
    assert report["annotators"]["bob"] == {"items": 3, "agreement": round(1 / 3, 4), "estimated_accuracy": None}


def test_krippendorff_alpha_by_hand():
    def unit(item, *labels):
        return [Annotation(item, f"c{j}", (label,), T0) for j, label in enumerate(labels)]

    same = _latest_per_annotator(unit(1, "a", "a") + unit(2, "b", "b"))
    assert krippendorff_alpha(same) == 1.0
    # two coders, units (a,a) (b,b) (a,b) (b,a): alpha = 1 - (n-1) * 4 / (2 * 4 * 4) = 1 - 28/32
    mixed = _latest_per_annotator(unit(1, "a", "a") + unit(2, "b", "b") + unit(3, "a", "b") + unit(4, "b", "a"))
    assert krippendorff_alpha(mixed) == pytest.approx(0.125)
    assert krippendorff_alpha(_latest_per_annotator(unit(1, "a"))) is None


def test_training_labels_are_the_consensus_and_the_cli_reports_agreement(store, settings, tmp_path):
    from annotator.active.selection import annotator_agreement
    from annotator.store import repo
    from tests.cli.test_cli import run_cli

    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"id": f"t{i}", "text": f"item {i}"}) for i in range(3)))
    from annotator.importer import import_manifest

    with store.session() as s:
        import_manifest(s, project_name="crowd", manifest=tmp_path / "m.jsonl")
        p = repo.get_project(s, name="crowd")
        pk = {it.external_id: it.id for it in repo.list_items(s, project=p)}
        votes = [("t0", "ann", "cat"), ("t0", "bob", "cat"), ("t0", "cy", "dog"),   # the dog is the latest, and loses
                 ("t1", "ann", "dog"), ("t2", "bob", "cat")]
        for n, (item, who, label) in enumerate(votes):
            repo.upsert_labels(s, project=p, records=[repo.LabelRecord(pk[item], [label], f"ls:{n}", created_by=who)])
            s.flush()
    with store.session() as s:
        labels = repo.current_labels(s, project=repo.get_project(s, name="crowd"))
    assert labels == {pk["t0"]: ["cat"], pk["t1"]: ["dog"], pk["t2"]: ["cat"]}
    report = annotator_agreement(store, project_name="crowd")
    assert report["disagreements"] == [{"id": "t0", "suggested": "cat", "label": ["cat"], "score": round(1 / 3, 4)}]
    assert report["annotators"]["cy"]["agreement"] == 0.0 and report["items_with_several_annotators"] == 1

    out = run_cli("agreement", "--project", "crowd", "--json", env_extra={"ANNOTATOR_DATA_DIR": str(settings.data_dir)},
                  check=True)
    assert json.loads(out.stdout)["disagreements"][0]["id"] == "t0"
    table = run_cli("agreement", "--project", "crowd", env_extra={"ANNOTATOR_DATA_DIR": str(settings.data_dir)}, check=True)
    assert "Krippendorff's alpha" in table.stdout and "t0: consensus cat" in table.stdout


def test_an_annotator_is_the_same_whether_a_webhook_or_a_task_listing_names_them(store):
    """Webhooks send ``completed_by`` as a user id; Label Studio's task list expands it into the user.
    Both must count as one annotator, or one person would outvote themselves."""
    from annotator.labelstudio.tasks import mirror_project, record_annotations
    from annotator.store import repo

    schema = """<View><Text name="text" value="$text"/><Choices name="c" toName="text">
      <Choice value="cat"/><Choice value="dog"/></Choices></View>"""
    result = lambda label: [{"from_name": "c", "to_name": "text", "type": "choices",  # noqa: E731
                             "value": {"choices": [label]}}]
    tasks = [{"id": 1, "data": {"text": "a"}, "annotations": [
        {"id": 10, "completed_by": {"id": 7, "email": "ann@example.com"}, "result": result("cat")},
        {"id": 11, "completed_by": {"id": 8, "email": "bob@example.com"}, "result": result("dog")}]}]
    with store.session() as s:
        mirror_project(s, 5, schema, tasks)
        p = repo.get_project(s, name="ls-5")
        record_annotations(s, p, None, [{"id": 12, "task": 1, "completed_by": 7, "result": result("dog")}], [])
        s.flush()
        who = sorted(a.annotator for a in repo.live_annotations(s, project=p))
    assert who == ["7", "7", "8"]


def test_a_listing_older_than_a_label_does_not_delete_it(store):
    """The backend lists a project's tasks while webhooks keep recording annotations: a label written
    after the listing began is missing from it because it is new, not because it was deleted (it was
    soft-deleted and revived, and each flip made the trainer refit again)."""
    from annotator.labelstudio.tasks import mirror_project, record_annotations
    from annotator.store import repo
    from annotator.store.models import utcnow

    schema = """<View><Text name="text" value="$text"/><Choices name="c" toName="text">
      <Choice value="cat"/><Choice value="dog"/></Choices></View>"""
    result = [{"from_name": "c", "to_name": "text", "type": "choices", "value": {"choices": ["cat"]}}]
    tasks = [{"id": 1, "data": {"text": "a"}, "annotations": [{"id": 10, "completed_by": 7, "result": result}]},
             {"id": 2, "data": {"text": "b"}, "annotations": []}]
    with store.session() as s:
        mirror_project(s, 5, schema, tasks)
        p = repo.get_project(s, name="ls-5")
        record_annotations(s, p, None, [{"id": 20, "task": 2, "completed_by": 7, "result": result}], [])  # old news
    listed_at = utcnow()  # a listing begins; the annotation on task 1 is deleted in Label Studio meanwhile
    with store.session() as s:
        p = repo.get_project(s, name="ls-5")
        record_annotations(s, p, None, [{"id": 30, "task": 1, "completed_by": 8, "result": result}], [])  # a webhook
    stale = [{**tasks[0], "annotations": []}, tasks[1]]  # the listing saw neither 10, nor 20, nor 30
    with store.session() as s:
        _, deleted, _ = mirror_project(s, 5, schema, stale, listed_at=listed_at)
        p = repo.get_project(s, name="ls-5")
        live = set(repo.live_annotation_keys(s, project=p, item_pks=[it.id for it in repo.list_items(s, project=p)]))
    assert deleted == 2 and live == {"ls:30"}

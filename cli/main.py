"""`annotator` commands. Each parses options, calls one library function, prints the result:
one JSON document on stdout with ``--json``, a readable summary otherwise; logs go to stderr."""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # a command's own startup (imports, settings) is one of its reported stages

import json  # noqa: E402
import sys  # noqa: E402
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from annotator.errors import AnnotatorError
from annotator.cli.errors import report, stop_cleanly

DISTRIBUTION = "multimodal-annotator"  # the name on PyPI; the command and the import name are `annotator`
app = typer.Typer(
    name="annotator",
    help="Multimodal annotation assistant for Label Studio: pre-labels, cross-modal search, active learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions: list, roll back.", no_args_is_help=True)
ls_app = typer.Typer(help="Label Studio: connect a project, sync annotations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(ls_app, name="ls")

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"annotator {version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None) -> None:
    """Multimodal annotation assistant for Label Studio: pre-labels, cross-modal search, active learning."""


ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _settings():
    from annotator.config import load_settings

    return load_settings()


def _store():
    from annotator.store import open_store

    return open_store(_settings())


def _emit(data: Any, as_json: bool, human: str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
    else:
        typer.echo(human if human is not None else json.dumps(data, indent=2, default=str))


# --- db ------------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database to the latest schema (or REVISION).

    Example: annotator db upgrade
    """
    from annotator.store.session import make_engine, schema_revisions, upgrade

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine, revision)
    current, _ = schema_revisions(engine)
    engine.dispose()
    typer.echo(f"database at revision {current}", err=True)


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """Show the database's schema revision and the code's head.

    Example: annotator db current
    """
    from annotator.store.session import make_engine, schema_revisions

    engine = make_engine(_settings().resolved_database_url)
    current, head = schema_revisions(engine)
    engine.dispose()
    _emit({"current": current, "head": head, "up_to_date": current == head}, as_json,
          f"current {current or 'none'}, head {head}" + ("" if current == head else " — run `annotator db upgrade`"))


# --- items ---------------------------------------------------------------------------------

@app.command("import")
def import_(
    manifest: Annotated[Path, typer.Argument(help="JSONL, CSV, a Label Studio export (.json) or a folder.")],
    project: ProjectOpt,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated class list; other labels are skipped.")] = None,
    encoding: Annotated[Optional[str], typer.Option(
        help="The file's encoding when not UTF-8 (e.g. cp1252 for Excel CSVs); UTF-16 with a BOM is detected.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load items (fields id, text, image, audio, label); bad lines are reported, good ones land.

    Example: annotator import items.jsonl --project pets --json
    """
    from annotator.importer import import_manifest

    classes = [c.strip() for c in labels.split(",") if c.strip()] if labels else None
    store = _store()
    with store.session() as session:
        result = import_manifest(session, project_name=project, manifest=manifest, classes=classes,
                                 encoding=encoding)
    store.close()
    lines = [f"imported {result.imported} item(s) into {project!r}"]
    lines += [f"  skipped line {s['line']}: {s['error']}" for s in result.skipped]
    _emit(result.to_dict(), as_json, "\n".join(lines))
    if result.imported == 0:
        raise typer.Exit(1)


# --- batch jobs: here, or on a Ray cluster ---------------------------------------------------

class Engine(str, Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[Engine, typer.Option(
    help="Where encoding and scoring run: local (this process) | ray (a Ray cluster: --ray-address or RAY_ADDRESS, "
         "else a local one on this machine's cores).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to join (ray://head:10001, or auto); default RAY_ADDRESS.")]
ActorsOpt = Annotated[Optional[int], typer.Option(
    min=1, help="Ray: encoder/scoring actors (default: one per GPU, else one per two CPUs).")]


def _engine(engine: Engine, address: Optional[str], actors: Optional[int], parquet_dir: Optional[Path] = None):
    from annotator.batch import batch_engine

    if engine is Engine.local and (address or actors or parquet_dir):
        raise typer.BadParameter("--ray-address, --actors and --parquet-dir need --engine ray")
    return batch_engine(_settings(), engine.value, address=address, actors=actors, parquet_dir=parquet_dir)


@app.command()
def embed(
    project: ProjectOpt,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    parquet_dir: Annotated[Optional[Path], typer.Option(
        help="Ray: also write the new vectors as Parquet shards under DIR/<modality>/.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Encode all items (cached: unchanged items cost nothing) and update the search indexes.
    Says where the time went, per stage (``stages``: seconds; fetch, decode and prepare are summed
    over the media threads, which overlap the network).

    Example: annotator embed --project pets --engine ray
    """
    from annotator.indexing import embed_project

    began = time.perf_counter()
    with _engine(engine, ray_address, actors, parquet_dir) as runner:
        report = embed_project(_store(), _settings(), project_name=project, engine=runner)
    report.stages.add("startup", began - STARTED)
    stages = ", ".join(f"{stage} {s:.1f}" for stage, s in report.stages.to_dict().items())
    lines = [f"{report.items} item(s) in {report.seconds:.1f} s; encoded {report.encoded}, cached {report.cached}; "
             f"indexes {report.index['indexes'] if report.index else {}}", f"  seconds per stage: {stages}"]
    lines += [f"  failed {f['id']} ({f['modality']}): {f['error']}" for f in report.failed]
    _emit(report.to_dict(), as_json, "\n".join(lines))


@app.command("audio-encoder")
def audio_encoder(
    project: ProjectOpt,
    out: Annotated[Optional[Path], typer.Option(
        help="Write the encoder here (default: under the data folder, where ANNOTATOR_AUDIO_MODEL=mfcc-gru looks).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the project's own audio encoder (a GRU over MFCC frames) on its labelled audio, or on its
    audio paired with the items' texts; then set the variable it prints and run `annotator embed`.

    Example: annotator audio-encoder --project pets
    """
    from annotator.audio_encoder import train_project_audio_encoder

    result = train_project_audio_encoder(_store(), _settings(), project_name=project, out=out)
    lines = [f"mfcc-gru encoder trained on {result['clips']} clip(s) ({result['trained_on']}) at {result['path']}; "
             f"use it with {result['use']}, then `annotator embed --project {project}`"]
    lines += [f"  skipped {f['id']}: {f['error']}" for f in result["failed"]]
    _emit(result, as_json, "\n".join(lines))


@app.command()
def retrain(
    project: ProjectOpt,
    head: Annotated[Optional[str], typer.Option(
        help="auto (choose by cross-validation on the project's labels) | logreg | kernel | concat | weighted | "
             "attention | gated | tensor | coattention (needs ANNOTATOR_PARTS=true); a model on some modalities only: "
             "'logreg [text]' (default: ANNOTATOR_MODEL, else auto)")] = None,
    force: Annotated[bool, typer.Option(help="Promote even if it is worse than the active version.")] = False,
    refit: Annotated[bool, typer.Option(
        "--refit", help="Fit the serving configuration again on every label (seconds; what the backend does after "
                        "each correction) instead of choosing the model anew (a search)")] = False,
    self_training: Annotated[Optional[bool], typer.Option(
        "--self-training/--no-self-training",
        help="Always / never learn from confident predictions on unlabelled items (default: ANNOTATOR_SELF_TRAINING, "
             "auto: where cross-validation says it helps).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Choose the model on the project's labels, fit it on all of them, promote it only if it is not worse.
    With --refit: fit the configuration already chosen, and say whether a search could change it.

    Example: annotator retrain --project pets --json
    """
    from annotator.training import retrain as run_retrain

    settings = _settings()
    if self_training is not None:
        settings = settings.model_copy(update={"self_training": "on" if self_training else "off"})
    result = run_retrain(_store(), settings, project_name=project, head=head or settings.model, force=force,
                         mode="refit" if refit else "search")
    m = result.metrics
    _emit(result.to_dict(), as_json,
          f"{result.model_version} ({result.training}): {result.model} — accuracy {_fmt(m['accuracy'])}, macro-F1 {_fmt(m['macro_f1'])}, "
          f"ECE {_fmt(m['ece'])} on {result.n_labels} labels ({m.get('evaluation')}); "
          f"{'promoted' if result.promoted else 'not promoted'}: {result.reason}\n"
          f"chosen because: {m.get('why')}\n{_candidate_table(m.get('candidates', []))}\n"
          f"labelling: {m['stopping']['signal']} ({m['stopping']['why']})"
          + (f"\nmodel search due: {result.search_due}" if result.search_due else "") + "".join(
              f"\ncontrol {c.control}: " + (f"{c.model_version}: {c.model} — macro-F1 {_fmt(c.metrics.get('macro_f1'))} "
                                            f"on {c.n_labels} labels; {'promoted' if c.promoted else 'not promoted'}: "
                                            f"{c.reason}" if c.model_version else f"not trained: {c.reason}")
              for c in result.controls))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _candidate_table(rows: list[dict]) -> str:
    """The model choice as a table: macro-F1 mean and sd over the folds per candidate, best first, the
    winner starred (a candidate far behind after the first repeat has fewer folds: it left the race)."""
    rows = sorted(rows, key=lambda r: -(r.get("macro_f1_mean") or -1))
    lines = [f"    {'candidate':<36} {'macro-F1':>8} {'sd':>6} {'accuracy':>8} {'folds':>5}"]
    lines += [f"  {'*' if r.get('chosen') else ' '} {r['name']:<36} {_fmt(r.get('macro_f1_mean')):>8} "
              f"{_fmt(r.get('macro_f1_sd')):>6} {_fmt(r.get('accuracy_mean')):>8} {r.get('splits', ''):>5}"
              + (f"  failed: {r['error']}" if r.get("error") else "") for r in rows]
    return "\n".join(lines)


@app.command()
def predict(
    project: ProjectOpt,
    item: Annotated[Optional[list[str]], typer.Option("--item", help="Only these item ids (repeatable).")] = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    to_labelstudio: Annotated[bool, typer.Option(
        help="Then push every task's pre-label to Label Studio in bulk (a Label Studio project).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Pre-label items with the active model version (items not encoded yet are encoded first).

    Example: annotator predict --project ls-3 --to-labelstudio
    """
    from annotator.prediction import predict as run_predict
    from annotator.runtime import Runtime

    store, runtime = _store(), Runtime(_settings())
    with _engine(engine, ray_address, actors) as runner:
        result = run_predict(store, _settings(), project_name=project, item_ids=item, runtime=runtime, engine=runner)
    for f in result.failed:
        typer.echo(f"warning: {f['id']}: {f['error']}", err=True)
    if to_labelstudio:
        from annotator.labelstudio.sync import push_project_predictions

        url, key = _ls_credentials(None, None)
        sent, version = push_project_predictions(store, runtime, url=url, api_key=key, project_name=project)
        typer.echo(f"Label Studio: {sent} prediction(s) pushed (model version {version})", err=True)
    _emit(result.predictions, as_json, "\n".join(
        f"{p['id']}\t{p['label']}\t{p['score']:.3f}" for p in result.predictions))


@app.command()
def search(
    project: ProjectOpt,
    text: Annotated[Optional[str], typer.Option(help="Free-text query.")] = None,
    image: Annotated[Optional[str], typer.Option(help="Image path or URL.")] = None,
    audio: Annotated[Optional[str], typer.Option(help="Audio path or URL.")] = None,
    item: Annotated[Optional[str], typer.Option(help="Item id: find similar items.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 10,
    modality: Annotated[Optional[str], typer.Option(help="Only this modality's vectors (text|image|audio).")] = None,
    label: Annotated[Optional[str], typer.Option(help="Only items labelled LABEL.")] = None,
    has_label: Annotated[Optional[bool], typer.Option("--has-label/--no-label", help="Only (un)labelled items.")] = None,
    to_labelstudio: Annotated[bool, typer.Option(
        help="Put the hits into the project's search tab in Label Studio, most similar first (replacing the last "
             "search's tab).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cross-modal search: text→image, image→text, item→similar, audio→anything.

    Example: annotator search --project pets --text "a cat on a sofa" -k 5 --modality image
    """
    from annotator.index.cross_modal import ProjectIndex

    hits = ProjectIndex(_settings(), project).search(
        _store(), text=text, image=image, audio=audio, item=item, k=k, modality=modality, label=label,
        has_label=has_label, trusted=True)
    if to_labelstudio:
        from annotator.labelstudio.sync import push_search_tab

        url, key = _ls_credentials(None, None)
        query = next(f"{name} {value}" for name, value in
                     (("text", text), ("image", image), ("audio", audio), ("like item", item)) if value)
        tab = push_search_tab(_store(), url=url, api_key=key, project_name=project, hits=[h.to_dict() for h in hits],
                              query=query)
        typer.echo(f"Label Studio tab {tab['view_id']} '{tab['title']}': {tab['tasks']} task(s), most similar first",
                   err=True)
    _emit([h.to_dict() for h in hits], as_json,
          "\n".join(f"{h.score:.3f}  {h.modality:<5}  {h.id}" for h in hits) or "no results")


@app.command()
def duplicates(
    project: ProjectOpt,
    threshold: Annotated[float, typer.Option(help="Cosine similarity at or above which items are duplicates.")] = 0.95,
    modality: Annotated[Optional[str], typer.Option(help="Only this modality.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Groups of near-duplicate items, largest first.

    Example: annotator duplicates --project pets --threshold 0.95
    """
    from annotator.index.cross_modal import ProjectIndex

    groups = ProjectIndex(_settings(), project).duplicates(_store(), threshold=threshold, modality=modality)
    _emit(groups, as_json, "\n".join(f"{g['modality']:<5} {g['min_score']:.3f}  {' '.join(g['items'])}"
                                     for g in groups) or "no near-duplicates")


StrategyOpt = Annotated[str, typer.Option(
    help="least-confidence | margin | entropy | margin-cluster | tcm | kcenter | badge | typiclust | random")]


@app.command()
def select(
    project: ProjectOpt,
    strategy: StrategyOpt = "margin",
    k: Annotated[int, typer.Option("-k", help="Batch size.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (ties, sampling).")] = 0,
    to_labelstudio: Annotated[bool, typer.Option(help="Make Label Studio serve this batch first.")] = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The next items worth labelling, best first.

    Example: annotator select --project ls-3 --strategy margin -k 50 --to-labelstudio
    """
    from annotator.active.selection import select_next
    from annotator.runtime import Runtime

    store, runtime = _store(), Runtime(_settings())
    with _engine(engine, ray_address, actors) as runner:
        picks = select_next(store, _settings(), project_name=project, strategy=strategy, k=k, random_state=seed,
                            runtime=runtime, engine=runner)
    if to_labelstudio:
        from annotator.labelstudio.sync import push_next_batch

        url, key = _ls_credentials(None, None)
        pushed = push_next_batch(store, runtime, url=url, api_key=key, project_name=project, picks=picks,
                                 strategy=strategy)
        typer.echo(f"Label Studio now serves this batch first (model version {pushed['model_version']})", err=True)
    _emit(picks, as_json, "\n".join(f"{p['score']:.4f}  {p['id']}" for p in picks))


@app.command()
def errors(
    project: ProjectOpt,
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 0,
    to_labelstudio: Annotated[bool, typer.Option(help="Create a review queue (a Data Manager tab) in Label Studio.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Suspected wrong labels, most suspicious first, with the label the model suggests.

    Example: annotator errors --project pets --limit 10
    """
    from annotator.active.selection import find_label_errors

    found = find_label_errors(_store(), _settings(), project_name=project)
    found = found[:limit] if limit else found
    if to_labelstudio:
        from annotator.labelstudio.sync import push_review_queue

        url, key = _ls_credentials(None, None)
        queue = push_review_queue(_store(), url=url, api_key=key, project_name=project, suspects=found)
        typer.echo(f"review queue: Data Manager tab {queue['view_id']} with {queue['tasks']} task(s)", err=True)
    _emit(found, as_json, "\n".join(f"{e['score']:.3f}  {e['id']}: {_tags(e['label'])} -> {_tags(e['suggested'])}"
                                    for e in found))


@app.command()
def explain(
    project: ProjectOpt,
    item: Annotated[str, typer.Option(help="The item to explain.")],
    out: Annotated[Optional[Path], typer.Option(help="Draw it: F.png, or F.html (shaded words, the figure embedded).")] = None,
    control: Annotated[Optional[str], typer.Option(help="Another classification control's model (default: the primary).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Why the active model predicted what it did for ITEM: the image regions, words and audio segments
    whose hiding costs the prediction most (occlusion), the modality weights and the top classes.

    Example: annotator explain --project pets --item 17 --out why.png
    """
    from annotator.explain import explain_item

    explanation = explain_item(_store(), _settings(), project_name=project, item_id=item, control=control)
    if out is not None:
        from annotator.report import draw_explanation

        draw_explanation(explanation, out)
        typer.echo(f"wrote {out}", err=True)
    _emit(explanation.to_dict(), as_json, explanation.summary())


def _tags(labels: str | list[str]) -> str:
    """One label as it is; a multi-label set as ``a+b`` (``-`` when empty)."""
    return labels if isinstance(labels, str) else "+".join(labels) or "-"


@app.command()
def agreement(
    project: ProjectOpt,
    to_labelstudio: Annotated[bool, typer.Option(
        help="Put the tasks annotators disagree on into a review queue (a Data Manager tab) in Label Studio.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """How far annotators agree: per annotator (with the consensus; estimated accuracy where they
    overlap enough for Dawid–Skene), Krippendorff's alpha, and the tasks they disagree on.

    Example: annotator agreement --project ls-3 --to-labelstudio
    """
    from annotator.active.selection import annotator_agreement

    report = annotator_agreement(_store(), project_name=project)
    if to_labelstudio:
        from annotator.labelstudio.sync import push_review_queue

        url, key = _ls_credentials(None, None)
        queue = push_review_queue(_store(), url=url, api_key=key, project_name=project,
                                  suspects=report["disagreements"], title="annotators disagree")
        typer.echo(f"review queue: Data Manager tab {queue['view_id']} with {queue['tasks']} task(s)", err=True)
    alpha = report["krippendorff_alpha"]
    lines = [f"{report['items']} labelled item(s), {report['items_with_several_annotators']} with several annotators; "
             f"Krippendorff's alpha {_fmt(alpha)}; consensus by {report['method']}",
             f"    {'annotator':<24} {'items':>6} {'agreement':>9} {'est. accuracy':>13}"]
    lines += [f"    {name:<24} {a['items']:>6} {a['agreement']:>9.3f} {_fmt(a['estimated_accuracy']):>13}"
              for name, a in report["annotators"].items()]
    lines += [f"  disagreement {d['score']:.2f}  {d['id']}: consensus {d['suggested']}" for d in report["disagreements"]]
    _emit(report, as_json, "\n".join(lines))


@app.command()
def simulate(
    manifest: Annotated[Path, typer.Argument(help="A labelled manifest; its labels are the oracle.")],
    strategy: StrategyOpt = "margin",
    budget: Annotated[int, typer.Option(help="Labels to spend.")] = 200,
    step: Annotated[int, typer.Option(help="Labels per round.")] = 20,
    seeds: Annotated[int, typer.Option(help="Repetitions with different splits.")] = 3,
    head: Annotated[str, typer.Option(help="The model, as for retrain (auto: chosen on each round's labels).")] = "auto",
    report: Annotated[Optional[Path], typer.Option(help="Write a learning-curve plot (.png or .html).")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        min=1, help="Worker processes; each curve is one task (default: one per core).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Active-learning curve of a strategy against random, from a cold start (strategies that need a
    model take their first batch with typiclust); each round trains the model `retrain` would.

    Example: annotator simulate items.jsonl --strategy margin --budget 200 --step 20 --report curve.html
    """
    from annotator.active.simulation import simulate as run_simulation
    from annotator.report import plot_curves

    result = run_simulation(_settings(), manifest, strategy=strategy, budget=budget, step=step, seeds=seeds, head=head,
                            n_jobs=jobs)
    lines = [f"full-data accuracy {result['full_accuracy']:.3f} ({result['items']} items, {seeds} seeds)"]
    for name, curve in result["curves"].items():
        lines.append(f"{name:>16}: " + " ".join(f"{p['labels']}:{p['accuracy']:.2f}" for p in curve)
                     + f"  (95 % reached at {result['labels_to_95pct_of_full'][name]} labels)")
    _emit(result, as_json, "\n".join(lines))  # the results first: a failing plot must not lose them
    if report:
        plot_curves(result, report)
        typer.echo(f"report written to {report}", err=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 9090,
    workers: Annotated[int, typer.Option(help="Worker processes (training still runs one at a time).")] = 1,
    log_level: Annotated[Optional[str], typer.Option(
        help="DEBUG | INFO | WARNING | ERROR (default: ANNOTATOR_LOG_LEVEL or LOG_LEVEL, else INFO).")] = None,
) -> None:
    """Run the Label Studio ML backend (add it in a project's Settings → Model, or `annotator ls connect`).

    Example: annotator serve --host 0.0.0.0 --port 9090 --workers 4
    """
    import os

    import uvicorn

    if log_level:
        os.environ["ANNOTATOR_LOG_LEVEL"] = log_level  # read by every worker process's settings
    _settings()  # fail now, with a clear message, on bad configuration
    typer.echo(f"annotator backend on http://{host}:{port} (Ctrl-C to stop)", err=True)
    uvicorn.run("annotator.backends.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


@app.command()
def demo(
    offline: Annotated[bool, typer.Option(help="No Label Studio: import, train and pre-label the sample here.")] = False,
    wait: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C (--no-wait: set up, then stop).")] = True,
    port: Annotated[int, typer.Option(help="Label Studio port (the next free one if taken).")] = 8080,
    backend_port: Annotated[int, typer.Option(help="Backend port (the next free one if taken).")] = 9090,
    as_json: JsonOpt = False,
) -> None:
    """First run: a real Label Studio with a sample project, wired to the backend, everything pre-labelled.

    Example: annotator demo --offline
    """
    settings = _settings()
    if offline:
        from annotator.cli.demo import run_offline_demo

        summary = run_offline_demo(_store(), settings)
        lines = [f"data dir: {settings.data_dir}",
                 f"imported {summary['imported']} sample items into project {summary['project']!r}",
                 f"model {summary['model_version']} ({summary['model']}): {summary['metrics']} (promoted: {summary['promoted']})",
                 "pre-labels for the unlabelled half:"]
        lines += [f"  {p['label']:<10} {p['score']:.2f}  {p['text']}" for p in summary["predictions"]]
        _emit(summary, as_json, "\n".join(lines))
        return
    from annotator.cli.demo import run_labelstudio_demo

    summary = run_labelstudio_demo(settings, wait=wait, ls_port=port, backend_port=backend_port,
                                   say=lambda m: typer.echo(m, err=True))
    if as_json:
        _emit(summary, True)


LsProjectOpt = Annotated[int, typer.Option("--project", "-p", help="Label Studio project id.")]
UrlOpt = Annotated[Optional[str], typer.Option(help="Label Studio URL (default: ANNOTATOR_LABEL_STUDIO_URL).")]
KeyOpt = Annotated[Optional[str], typer.Option(help="API key: legacy token or personal access token.")]


def _ls_credentials(url: Optional[str], api_key: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    settings = _settings()
    key = api_key or (settings.label_studio_api_key.get_secret_value() if settings.label_studio_api_key else None)
    return url or settings.label_studio_url, key


@ls_app.command("connect")
def ls_connect(
    project: LsProjectOpt,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    backend_url: Annotated[Optional[str], typer.Option(help="This backend's URL as Label Studio reaches it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register the backend on a project (its webhook then sends the project's secret), import its tasks,
    and bulk-upload predictions for all of them. The project is then ``ls-<id>`` for the other commands.

    Example: annotator ls connect --project 3 --backend-url http://127.0.0.1:9090
    """
    from annotator.labelstudio.sync import connect

    url, key = _ls_credentials(url, api_key)
    result = connect(_store(), _settings(), url=url, api_key=key, ls_project_id=project, backend_url=backend_url)
    secured = f"; webhook {result['webhook_id']} sends the project's secret" if result["webhook_id"] else ""
    _emit(result, as_json, f"{result['tasks']} tasks, {result['labels']} labels imported into {result['project']!r}; "
                           f"{result['predictions']} predictions uploaded (model version {result['model_version']})"
                           f"{secured}")


@ls_app.command("sync")
def ls_sync(project: LsProjectOpt, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Pull tasks and annotations from Label Studio into the store (recovers missed webhooks).

    Example: annotator ls sync --project 3
    """
    from annotator.labelstudio.sync import sync

    url, key = _ls_credentials(url, api_key)
    result = sync(_store(), url=url, api_key=key, ls_project_id=project)
    _emit(result, as_json, f"{result['tasks']} tasks, {result['labels']} labels synced into {result['project']!r}; "
                           f"{result['deleted_labels']} label(s) deleted in Label Studio removed")


@models_app.command("list")
def models_list(project: ProjectOpt, as_json: JsonOpt = False) -> None:
    """Model versions of a project, oldest first; each classification control has its own (``v3`` is
    the primary control's, ``mood.v2`` the control ``mood``'s).

    Example: annotator models list --project pets
    """
    from annotator.store import repo

    with _store().session() as s:
        versions = [{"version": v.version, "control": v.control, "model": v.head, "status": v.status,
                     "n_labels": v.n_labels,
                     "accuracy": v.metrics.get("accuracy"), "macro_f1": v.metrics.get("macro_f1"),
                     "evaluation": v.metrics.get("evaluation"), "why": v.metrics.get("why"),
                     "candidates": v.metrics.get("candidates", []), "stopping": v.metrics.get("stopping"),
                     "created_at": v.created_at.isoformat()}
                    for v in repo.list_model_versions(s, project=repo.get_project(s, name=project))]
    lines = []
    for v in versions:
        lines.append(f"{v['version']:>12} {v['status']:<9} {v['model']:<28} accuracy {_fmt(v['accuracy'])} "
                     f"macro-F1 {_fmt(v['macro_f1'])} ({v['n_labels']} labels, {v['evaluation']})")
        if v["status"] == "active" and v["candidates"]:
            lines.append(f"       chosen because: {v['why']}\n{_candidate_table(v['candidates'])}")
        if v["status"] == "active" and v["stopping"]:
            lines.append(f"       labelling: {v['stopping']['signal']} ({v['stopping']['why']})")
    _emit(versions, as_json, "\n".join(lines) or "no model versions yet")


@models_app.command("promote")
def models_promote(project: ProjectOpt, version: Annotated[str, typer.Argument()]) -> None:
    """Make VERSION the active model (e.g. to roll back).

    Example: annotator models promote --project pets v2
    """
    from annotator.store import repo

    with _store().session() as s:
        repo.promote_model_version(s, project=repo.get_project(s, name=project), version=version)
    typer.echo(f"{version} is now active for {project!r}", err=True)


def main() -> None:
    """Console entry point. Click's standalone mode prints usage errors with the usage line and exits
    2 (and exits with each command's code); library errors become one line on stderr and an exit code.
    Ctrl-C and SIGTERM stop any command the same clean way (`stop_cleanly`)."""
    with stop_cleanly():
        try:
            app()
        except AnnotatorError as exc:
            sys.exit(report(exc))


if __name__ == "__main__":
    main()

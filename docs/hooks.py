"""MkDocs hooks: the pages that must not disagree with the code are generated at build time.

A page holds a marker, ``<!-- generated: NAME -->``, and the build replaces it with:

- ``settings``: every field of `annotator.config.Settings`, its variable names, default and
  description (from the class docstring's Parameters; a field without one fails the build);
- ``cli``: every `annotator` command's usage, summary, example and options, from the typer app;
- ``benchmarks``: each `bench/results/*.json` file's headline figures and its plot.

The same functions are what the tests call, so a change to the code changes the docs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- generated: (\w+) -->")


# --- configuration -------------------------------------------------------------------------

def _docstring_parameters(doc: str) -> dict[str, str]:
    """numpydoc ``Parameters`` of a docstring, read by griffe (mkdocstrings' own parser, so the
    configuration page and the API reference read a docstring alike): {name: description}; a line
    naming several (``max_audio_s, max_text_chars : float, int``) gives each the same text."""
    import inspect

    from griffe import Docstring, DocstringSectionKind

    sections = Docstring(inspect.cleandoc(doc)).parse("numpy")
    parameters = next(s.value for s in sections if s.kind is DocstringSectionKind.parameters)
    return {p.name: " ".join(p.description.split()) for p in parameters}


def _rst_to_markdown(text: str) -> str:
    """A docstring's text for a Markdown table cell: RST literals as code, ``<`` escaped outside code
    (``DIR/<modality>`` is not an HTML tag), ``|`` escaped."""
    parts = re.sub(r"``([^`]+)``", r"`\1`", text).split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def settings_rows() -> list[dict[str, str]]:
    """One row per `Settings` field: its environment variables, default and description."""
    from pydantic_core import PydanticUndefined

    from annotator.config import Settings

    described = _docstring_parameters(Settings.__doc__)
    rows = []
    for name, field in Settings.model_fields.items():
        if name not in described:
            raise ValueError(f"Settings.{name} has no description in the Settings docstring's Parameters")
        variables = [c for c in field.validation_alias.choices if c.isupper()]
        if field.default_factory is not None:
            default = "see description"
        elif field.default is PydanticUndefined or field.default in (None, ""):
            default = "—"
        else:
            default = f"`{field.default}`"
        rows.append({"name": name, "variables": ", ".join(f"`{v}`" for v in variables), "default": default,
                     "description": _rst_to_markdown(described[name])})
    return rows


def settings_table() -> str:
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    lines += [f"| {r['variables']} | {r['default']} | {r['description']} |" for r in settings_rows()]
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------

def commands() -> list[tuple[str, object]]:
    """Every leaf command of the `annotator` app as (full name, click command), in the app's order."""
    import typer

    from annotator.cli.main import app

    root = typer.main.get_command(app)
    out = []

    def walk(prefix: str, group) -> None:
        for name, command in group.commands.items():
            full = f"{prefix} {name}"
            if hasattr(command, "commands"):
                walk(full, command)
            else:
                out.append((full, command))

    walk("annotator", root)
    return out


def _summary_and_example(help_text: str) -> tuple[str, str | None]:
    text = (help_text or "").strip()
    example = re.search(r"Example:\s*\n?\s*(.+)", text)
    summary = re.split(r"\n\s*\n|\s*Example:", text)[0]
    return " ".join(summary.split()), example.group(1).strip() if example else None


def cli_reference() -> str:
    parts = []
    for name, command in commands():
        summary, example = _summary_and_example(command.help)
        usage = " ".join(command.collect_usage_pieces(command.context_class(command, info_name=name)))
        parts.append(f"### `{name}`\n\n{_rst_to_markdown(summary)}\n\n```text\n{name} {usage}\n```")
        if example:
            parts.append(f"Example: `{example}`")
        options = []
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":  # typer carries its own click
                flags = " / ".join(param.opts + param.secondary_opts)
                options.append(f"| `{flags}` | {_rst_to_markdown(' '.join((param.help or '').split()))} |")
        if options:
            parts.append("| option | |\n|---|---|\n" + "\n".join(options))
    return "\n\n".join(parts)


# --- benchmarks ----------------------------------------------------------------------------

def _figures(value, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalar figures of a results document, flattened to (path, value), at most three levels deep."""
    if isinstance(value, dict) and depth < 3:
        return [f for k, v in value.items() if k not in ("benchmark", "date", "machine", "measured_at")
                for f in _figures(v, f"{prefix}{k} / " if depth else f"{k} / ", depth + 1)]
    if isinstance(value, (int, float)):  # bools too
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        return [(prefix.rstrip(" /"), shown)]
    return []


def benchmark_results(folder: Path = ROOT / "bench" / "results") -> str:
    parts = []
    for path in sorted(folder.glob("bench_*.json")):
        if path.stem.endswith("_smoke"):
            continue
        doc = json.loads(path.read_text())
        figures = _figures(doc)
        machine = doc.get("machine", {})
        where = f"{machine.get('cpus', '?')} CPUs" + (f", {machine['gpu']}" if machine.get("gpu") else "")
        parts.append(f"### `{path.stem}`\n\n`bench/results/{path.name}`, run {doc.get('date', '?')} on {where}")
        rows = [f"| {name} | {shown} |" for name, shown in figures[:60]]
        more = f"\n\n…and {len(figures) - 60} more in the file." if len(figures) > 60 else ""
        parts.append("| figure | value |\n|---|---|\n" + "\n".join(rows) + more)
        plot = path.with_suffix(".png")
        if plot.exists():
            parts.append(f"![{path.stem}](results/{plot.name})")
    return "\n\n".join(parts)


GENERATORS = {"settings": settings_table, "cli": cli_reference, "benchmarks": benchmark_results}


# --- the hooks MkDocs calls -----------------------------------------------------------------

def on_page_markdown(markdown: str, **_) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)


def on_files(files, config, **_):
    """The benchmark plots live in bench/results/; the site shows them under results/."""
    from mkdocs.structure.files import File

    for plot in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(File(f"results/{plot.name}", str(plot.parent.parent), config["site_dir"], False))
    return files

"""The documentation is tested: its examples run, its generated pages come from the code, and the
site builds with ``mkdocs build --strict`` (a broken link or reference fails).

Examples, read with Sybil from every page under docs/:
- ``console`` blocks run: each ``$ annotator …`` line is the command, run in this process from the
  repository's root; the lines under it are its expected output, where ``...`` stands for anything.
  ``$ export NAME=VALUE`` sets a variable for the page's later commands (a relative data folder is a
  temporary one: the tests write nowhere else).
- ``python`` blocks run, in one namespace per page.
- ``xml`` blocks are label configs: each must parse and have something to predict.
- ``bash`` blocks run like console blocks without expected output.
A block right after ``<!-- not run: REASON -->`` is shown only; the reason says why.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NOT_RUN = re.compile(r"<!-- not run: [^>]*\S[^>]*-->\s*$")
sys.path.insert(0, str(DOCS))
import hooks  # noqa: E402  (docs/hooks.py: the generators the site is built with)


def _run_annotator(args: list[str], env: dict[str, str]) -> str:
    from typer.testing import CliRunner

    from annotator.cli.main import app

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args, env=env)
    finally:
        os.chdir(here)
    assert result.exit_code == 0, f"annotator {shlex.join(args)} exited {result.exit_code}: {result.output[-2000:]}"
    return result.stdout


def _matches(expected: str, output: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, output.strip(), flags=re.DOTALL) is not None


def _shell_lines(example, prompt: str) -> None:
    """Run a console (``prompt="$ "``) or bash (``prompt=""``) block's commands in order."""
    env = example.namespace.setdefault("env", {})
    commands: list[tuple[str, list[str]]] = []
    for line in example.parsed.splitlines():
        if prompt and not line.startswith(prompt):
            if commands:
                commands[-1][1].append(line)
            continue
        command = line[len(prompt):].split(" #")[0].strip()
        if command:
            commands.append((command, []))
    for command, expected in commands:
        words = shlex.split(command)
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                if name == "ANNOTATOR_DATA_DIR" and not os.path.isabs(value):
                    value = str(example.namespace["tmp_path"] / value)
                env[name] = value
            continue
        assert words[0] == "annotator", f"only annotator commands run in the docs' examples, not {command!r}"
        output = _run_annotator(words[1:], env)
        if expected:
            wanted = "\n".join(expected)
            assert _matches(wanted, output), f"{command}: expected\n{wanted}\ngot\n{output[:3000]}"


def _label_config(example) -> None:
    from annotator.labelstudio.label_config import parse_label_config

    config = parse_label_config(example.parsed)
    assert config.predicted_controls, "a label config in the docs predicts nothing"


def _shown_only(parser):
    """``parser``'s regions, less those right after a ``<!-- not run: … -->`` comment."""
    def parse(document):
        for region in parser(document):
            if not NOT_RUN.search(document.text[:region.start]):
                yield region
    return parse


SYBIL = Sybil(parsers=[_shown_only(p) for p in (
    CodeBlockParser(language="console", evaluator=lambda ex: _shell_lines(ex, "$ ")),
    CodeBlockParser(language="bash", evaluator=lambda ex: _shell_lines(ex, "")),
    CodeBlockParser(language="xml", evaluator=_label_config),
    PythonCodeBlockParser(),
)])
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_each_page_run(page, tmp_path):
    document = SYBIL.parse(DOCS / page)
    document.namespace["tmp_path"] = tmp_path
    for example in document:
        example.evaluate()


def test_a_broken_example_fails(tmp_path):
    """The checks above can fail (a wrong expected output, a label config with nothing to predict), and a
    block marked not run is no example."""
    page = tmp_path / "broken.md"
    page.write_text("```console\n$ annotator --version\nannotator 9.9.9\n```\n\n"
                    "<!-- not run: shown only -->\n```bash\nannotator no-such-command\n```\n\n"
                    "```xml\n<View><Text name=\"t\" value=\"$t\"/></View>\n```\n")
    examples = list(SYBIL.parse(page))
    assert len(examples) == 2  # the bash block after "not run" is not an example
    with pytest.raises(Exception, match="expected"):
        examples[0].evaluate()
    with pytest.raises(Exception, match="predicts nothing"):
        examples[1].evaluate()


def test_the_configuration_page_lists_every_setting():
    from annotator.config import Settings

    rows = hooks.settings_rows()
    assert [r["name"] for r in rows] == list(Settings.model_fields)
    by_name = {r["name"]: r for r in rows}
    assert "`ANNOTATOR_DATA_DIR`" in by_name["data_dir"]["variables"]
    assert "`LABEL_STUDIO_URL`" in by_name["label_studio_url"]["variables"]
    assert by_name["predict_budget_s"]["default"] == "`50.0`" and by_name["predict_budget_s"]["description"]


def test_the_command_reference_covers_every_command_with_a_summary_and_an_example():
    reference = hooks.cli_reference()
    for name, command in hooks.commands():
        summary, example = hooks._summary_and_example(command.help)
        assert summary, f"{name} has no summary"
        assert example and example.startswith(name), f"{name} --help has no example (Example: {name} …)"
        assert f"### `{name}`" in reference


def test_every_command_help_in_the_terminal_shows_its_example():
    from typer.testing import CliRunner

    from annotator.cli.main import app

    for name, _command in hooks.commands():
        shown = CliRunner().invoke(app, [*name.split()[1:], "--help"], terminal_width=200)
        assert shown.exit_code == 0 and "Example:" in shown.stdout, f"{name} --help: {shown.stdout[-500:]}"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing image or a reference to no object fails."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").read_text().count("ANNOTATOR_") > 40
    assert "annotator retrain" in (tmp_path / "site" / "cli" / "index.html").read_text()

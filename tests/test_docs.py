"""The README and docs/: figures rendered from bench/results/*.json and never stale, a
command reference generated from the parsers, an example in every command's --help, and
a site that `mkdocs build --strict` builds."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sqz.cli import build_parser
from sqz.cli.examples import walk_parsers

ROOT = Path(__file__).resolve().parents[1]


def _render_module():
    spec = importlib.util.spec_from_file_location("docs_render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def test_generated_blocks_match_the_results_and_the_parsers():
    stale = [str(path.relative_to(ROOT)) for path in render.stale_files()]
    assert stale == [], f"run .venv/bin/python docs/render.py: {stale}"


def _table_rows(text: str, block: str) -> list[list[str]]:
    body = re.search(rf"<!-- BEGIN generated: {block}\b[^>]*-->(.*?)<!-- END generated: {block} -->", text, re.S).group(1)
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]  # after header and rule


def test_readme_headline_rows_are_the_figures_of_the_files_they_name():
    """Read back from the committed README, not re-rendered: every row's value is the
    headline figure of the result its source column names, with that result's date."""
    rows = _table_rows((ROOT / "README.md").read_text(), "headline")
    assert rows, "the README has no headline figures"
    for label, value, date, _machine, source in rows:
        name = re.match(r"\[`([\w-]+)`\]", source).group(1)
        result = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())
        assert render.cell(result["figures"]["headline"][label.replace("\\|", "|")]) == value
        assert result["date"] == date
        assert ("*transcribed*" in source) == bool(result.get("transcribed_from"))


def test_a_changed_figure_makes_the_docs_stale(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "bench" / "results", results)
    path = sorted(results.glob("*.json"))[0]
    payload = json.loads(path.read_text())
    payload["figures"]["headline"] = {"a figure that moved": "1 B"}
    path.write_text(json.dumps(payload))
    assert ROOT / "README.md" in render.stale_files(results)


def test_a_result_file_without_its_machine_is_refused_by_name(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"date": "2026-12-08", "commit": "abc", "command": "c", "figures": {}}))
    with pytest.raises(ValueError, match=r"x\.json: missing machine"):
        render.load_results(tmp_path)


def test_superseded_results_move_to_history_only_once_their_successor_exists(tmp_path):
    def write(name, **extra):
        payload = {"name": name, "date": "2026-12-08", "machine": {"cpu_cores": 2}, "commit": "abc", "command": "c",
                   "figures": {"headline": {f"{name} figure": 1}}, **extra}  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))

    write("old", superseded_by="new")
    assert [row[0] for row in render.headline_rows(render.load_results(tmp_path), "b.md")] == ["old figure"]
    write("new")
    assert [row[0] for row in render.headline_rows(render.load_results(tmp_path), "b.md")] == ["new figure"]
    assert "## History" in render.render_benchmarks(render.load_results(tmp_path))


def test_every_command_help_has_examples_that_parse():
    for path, parser in walk_parsers(build_parser()):
        assert parser.examples, f"`sqz {path}` has no example (sqz/cli/examples.py)"
        assert "examples:" in parser.format_help()
        for example in parser.examples:
            words = shlex.split(example, comments=True)
            assert words[: 1 + len(path.split())] == ["sqz", *path.split()], example
            if "--help" not in words and len(words) > 1:
                build_parser().parse_args(words[1:])  # exits (SystemExit) on an example that does not parse


def test_readme_stays_short_and_its_first_screen_says_what_how_and_how_well():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:45])
    assert "make demo" in first_screen and "Ray Train" in first_screen
    assert "<!-- BEGIN generated: headline" in first_screen


def test_mkdocs_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()


def test_figures_shaped_like_tables_render_as_tables():
    result = {"name": "r", "date": "2026-12-08", "machine": {"cpu_cores": 2}, "commit": "abc", "command": "c",
              "figures": {"runs": [{"trials": 16, "stage_s": {"sweep": 68.5}}, {"trials": 32, "stage_s": {"sweep": 130.25}}],
                          "opaque": [1, 2]}}  # fmt: skip
    text = render.render_result(result)
    assert "| trials | stage_s.sweep |" in text and "| 32 | 130.25 |" in text
    assert "More in `bench/results/r.json`: `opaque`." in text

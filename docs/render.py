"""Renders what the README and the docs must never hold by hand: the benchmark figures
(from ``bench/results/*.json``, written by ``bench/results.py``) and the command
reference (from the ``sqz`` argparse parsers).

    .venv/bin/python docs/render.py           # rewrite the generated blocks
    .venv/bin/python docs/render.py --check   # exit 1, naming each file that is stale

Each generated block sits between ``<!-- BEGIN generated: NAME ... -->`` and
``<!-- END generated: NAME -->``; the prose around it is written by hand and left alone.
The renderer knows nothing about any one benchmark: every result file is rendered from
its ``figures["headline"]`` ({label: value}) and ``figures["tables"]`` ([{title,
columns, rows}]); other scalar figures become one key/value table. A result with
``"transcribed_from"`` was copied from an earlier printout (a GPU run, a long CPU run)
and is marked so wherever it appears; one with ``"superseded_by": NAME`` moves to the
benchmarks page's dated history once the result NAME exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# argparse wraps help at the terminal's width: one width, so the reference is the same
# on every machine.
HELP_COLUMNS = "100"


# ---------------------------------------------------------------- results


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """Every result file, by name; a file that is not a result is an error naming it."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{_shown(path)}: not JSON ({exc})") from None
        missing = [key for key in ("date", "machine", "commit", "command", "figures") if key not in result]
        if missing:
            raise ValueError(f"{_shown(path)}: missing {', '.join(missing)} (write it with bench/results.py)")
        result.setdefault("name", path.stem)
        for table in result["figures"].get("tables", []):
            if not {"title", "columns", "rows"} <= table.keys():
                raise ValueError(f"{_shown(path)}: a table needs title, columns and rows")
            if any(len(row) != len(table["columns"]) for row in table["rows"]):
                raise ValueError(f"{_shown(path)}: table {table['title']!r} has a row whose length differs "
                                 "from its columns")  # fmt: skip
        results.append(result)
    return results


def is_history(result: dict, names: set[str]) -> bool:
    return result.get("superseded_by") in names


def machine_text(machine: dict | str) -> str:
    """A short name for where the figures come from: the GPU if there was one, else the cores."""
    if isinstance(machine, str):
        return machine
    if machine.get("description"):
        return machine["description"]
    if machine.get("gpu"):
        return machine["gpu"]
    cores, cpu = machine.get("cpu_cores"), machine.get("cpu", "")
    memory = f", {machine['memory_gib']} GiB" if machine.get("memory_gib") else ""
    return (f"{cores}-core {cpu}".strip() if cores else (cpu or "unknown")) + memory


def source_text(result: dict) -> str:
    text = f"[`{result['name']}`]({{benchmarks}}#{anchor(result)}) @ {result['commit']}"
    return text + (", *transcribed*" if result.get("transcribed_from") else "")


def anchor(result: dict) -> str:
    """The id MkDocs' toc gives the result's heading (its title, slugified)."""
    title = result["figures"].get("title", result["name"])
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def cell(value) -> str:
    """One table cell: numbers as printed (thousands grouped), None as a dash; a pipe
    would end the cell, so it is escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,}" if abs(value) >= 1000 else f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# A cell as a bench printed it ("5,951", "1.59x", "537,765 B", "-0.28"): right-aligned like a number.
NUMBER_TEXT = re.compile(r"[-+]?[\d,]*\.?\d+ ?(x|%|B|s|kB)?")


def is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    return value is None or isinstance(value, (int, float)) or (isinstance(value, str) and bool(NUMBER_TEXT.fullmatch(value)))


def markdown_table(columns: list, rows: list[list]) -> str:
    numeric = [bool(rows) and all(is_number(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join(" ---: " if numeric[i] else " --- " for i in range(len(columns))) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_rows(results: list[dict], benchmarks_link: str) -> list[list]:
    names = {r["name"] for r in results}
    rows = []
    for result in results:
        if is_history(result, names):
            continue
        source = source_text(result).replace("{benchmarks}", benchmarks_link)
        machine = machine_text(result["machine"])
        if "load_average_1m" in result["figures"]:  # timings on a shared machine move with its load: say how loaded
            machine += f", load {result['figures']['load_average_1m']:g}"
        for label, value in result["figures"].get("headline", {}).items():
            rows.append([label, value, result["date"], machine, source])
    return rows


def render_headline(results: list[dict], benchmarks_link: str) -> str:
    rows = headline_rows(results, benchmarks_link)
    if not rows:
        return "No benchmark results recorded yet (`bench/results/`)."
    table = markdown_table(["figure", "value", "date", "machine", "source"], rows)
    return table + f"\n\nEvery figure's table, command and notes: [benchmarks]({benchmarks_link})."


def render_result(result: dict, level: str = "##") -> str:
    figures = result["figures"]
    parts = [f"{level} {figures.get('title', result['name'])}", ""]
    meta = f"Measured {result['date']} on {machine_text(result['machine'])}, commit {result['commit']}."
    if result.get("transcribed_from"):
        meta += f" **Transcribed** from {result['transcribed_from']} (not re-measured here)."
    parts += [meta, "", f"```\n{result['command']}\n```", ""]
    if result.get("notes"):
        parts += [result["notes"], ""]
    if figures.get("headline"):
        parts += [markdown_table(["headline", "value"], [[k, v] for k, v in figures["headline"].items()]), ""]
    for table in figures.get("tables", []):
        parts += [f"**{table['title']}**", "", markdown_table(table["columns"], table["rows"]), ""]
    scalars = {k: v for k, v in figures.items() if k not in ("tables", "headline", "title") and not isinstance(v, (dict, list))}
    if scalars:
        parts += [markdown_table(["figure", "value"], [[k, v] for k, v in scalars.items()]), ""]
    others = []
    for key, value in figures.items():
        if key in ("tables", "headline") or not isinstance(value, (dict, list)):
            continue
        table = _as_table(value)
        if table:
            parts += [f"**{key}**", "", markdown_table(*table), ""]
        else:
            others.append(key)
    if others:
        parts += [f"More in `bench/results/{result['name']}.json`: {', '.join(f'`{k}`' for k in others)}.", ""]
    return "\n".join(parts).rstrip() + "\n"


def _flat(row: dict) -> dict:
    """A dict's scalars, with one level of nested dicts as ``parent.child``."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def _as_table(value) -> tuple[list, list[list]] | None:
    """A figure that is not in figures["tables"] but has a table's shape: a list of dicts
    (one row each, the union of their keys as columns) or a dict of scalars."""
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        rows = [_flat(row) for row in value]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return columns, [[row.get(column) for column in columns] for row in rows]
    if isinstance(value, dict) and value:
        flat = _flat(value)
        return (["figure", "value"], [[k, v] for k, v in flat.items()]) if flat else None
    return None


def render_benchmarks(results: list[dict]) -> str:
    names = {r["name"] for r in results}
    current = [r for r in results if not is_history(r, names)]
    history = sorted((r for r in results if is_history(r, names)), key=lambda r: (r["date"], r["name"]), reverse=True)
    parts = [render_result(r) for r in current]
    if history:
        parts.append("## History\n\nEarlier runs, superseded by the result each one names; newest first.\n")
        parts += [render_result(r, "###") + f"\nSuperseded by `{r['superseded_by']}`.\n" for r in history]
    return "\n".join(parts).rstrip()


# ---------------------------------------------------------------- commands


def _parser():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sqz.cli import build_parser

    return build_parser()


@contextlib.contextmanager
def _help_width():
    """argparse reads COLUMNS when it formats; set only while rendering, so a test process
    that renders leaves the width of everything else alone."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def command_rows() -> list[list[str]]:
    """`sqz <command>` and its one-line help, for every command and subcommand."""
    from sqz.cli.examples import walk_parsers

    rows = []
    for path, parser in walk_parsers(_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    child = action.choices[choice.dest]
                    if not any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                        rows.append([f"`{' '.join(['sqz', path, choice.dest]).replace('  ', ' ')}`", choice.help or ""])
    return rows


def render_command_table() -> str:
    return markdown_table(["command", "what it does"], command_rows())


def render_command_reference() -> str:
    from sqz.cli.examples import walk_parsers

    parts = []
    with _help_width():
        for path, parser in walk_parsers(_parser()):
            parts += [f"## `{' '.join(['sqz', path]).strip()}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts).rstrip()


# ---------------------------------------------------------------- blocks


def replace_block(text: str, name: str, body: str, where: Path) -> str:
    pattern = re.compile(rf"(<!-- BEGIN generated: {re.escape(name)}\b[^>]*-->)(.*?)(<!-- END generated: {re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{where.relative_to(ROOT)}: no block '{name}' (<!-- BEGIN generated: {name} --> ... <!-- END generated: {name} -->)")
    return pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(3)}", text, count=1)


def rendered_files(results_dir: Path | None = None) -> dict[Path, str]:
    """Each file with generated blocks, as it should read now."""
    results = load_results(results_dir or RESULTS_DIR)
    blocks = {
        README: {"headline": render_headline(results, "docs/benchmarks.md"), "commands": render_command_table()},
        DOCS / "index.md": {"headline": render_headline(results, "benchmarks.md")},
        DOCS / "benchmarks.md": {"benchmarks": render_benchmarks(results)},
        DOCS / "commands.md": {"commands": render_command_table(), "reference": render_command_reference()},
    }
    out = {}
    for path, named in blocks.items():
        text = path.read_text()
        for name, body in named.items():
            text = replace_block(text, name, body, path)
        out[path] = text
    return out


def stale_files(results_dir: Path | None = None) -> list[Path]:
    return [path for path, text in rendered_files(results_dir).items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which files are stale (exit 1 if any)")
    args = parser.parse_args(argv)
    try:
        files = rendered_files()
    except ValueError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    stale = [path for path, text in files.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run: .venv/bin/python docs/render.py)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

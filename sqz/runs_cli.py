"""``sqz runs ls|show|rm URL``: the runs under a storage root, from the command line.

Registered by sqz/cli.py; the work is in sqz.catalog.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["add_runs_parser", "cmd_runs"]


def add_runs_parser(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list, show or delete the runs under a storage root",
                          description="Runs are the folders holding a manifest.json under a storage root "
                          "(a local path or s3://bucket/prefix).")  # fmt: skip
    actions = runs.add_subparsers(dest="action", required=True, parser_class=type(runs))
    for name, help_text, what in (
        ("ls", "list the runs under a root", "the storage root, e.g. ./sqz-runs or s3://bucket/runs"),
        ("show", "print a run's manifest and metrics tables", "the run folder, e.g. ./sqz-runs/run-0123abcd4567"),
        ("rm", "delete a run folder and everything in it", "the run folder to delete"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("url", help=what)
        action.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
        if name == "show":
            action.add_argument("--json", action="store_true", help="print everything as one JSON object")


def _rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "  (no rows)"
    columns = [c for c in rows[0] if c != "run_id"]

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def cmd_runs(args: argparse.Namespace) -> int:
    from sqz import catalog

    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint
    if args.action == "ls":
        runs = catalog.list_runs(args.url)
        print(f"{'run':24} {'model':20} {'data':10} {'epochs':>6} {'trials':>6} {'report':>6} {'files':>6} {'bytes':>13}")
        for r in runs:
            print(f"{r['run_id']:24} {str(r['model']):20} {str(r['data']):10} {r['epochs']:>6} {r['trials']:>6} "
                  f"{'yes' if r['reported'] else 'no':>6} {r['files']:>6} {r['bytes']:>13,}")  # fmt: skip
        print(f"{len(runs)} run(s) under {args.url}")
    elif args.action == "show":
        run = catalog.describe_run(args.url)
        if args.json:
            print(json.dumps(run, indent=2, sort_keys=True))
            return 0
        print(f"run {run['run_id']} at {run['run_url']}: {run['files']} files, {run['bytes']:,} bytes")
        print("manifest.json:")
        print(json.dumps(run["manifest"], indent=2, sort_keys=True))
        for table, rows in run["tables"].items():
            print(f"{table}: {len(rows)} row(s)")
            if rows:
                print(_rows_table(rows))
    else:
        removed = catalog.delete_run(args.url)
        print(f"deleted {args.url} ({removed} files)")
    return 0

"""`sqz runs ls|show|rm URL`: the runs under a storage root (sqz.runs.catalog)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqz.cli.options import add_s3_endpoint, use_s3_endpoint
from sqz.cli.tables import print_table

__all__ = ["add_parser", "command"]


def add_parser(sub: Any, parser_class: type) -> None:
    runs = sub.add_parser("runs", help="list, show or delete the runs under a storage root",
                          description="Runs are the folders holding a manifest.json under a storage root "
                          "(a local path or s3://bucket/prefix).")  # fmt: skip
    actions = runs.add_subparsers(dest="action", required=True, parser_class=parser_class)
    for name, help_text, what in (
        ("ls", "list the runs under a root", "the storage root, e.g. ./sqz-runs or s3://bucket/runs"),
        ("show", "print a run's manifest and metrics tables", "the run folder, e.g. ./sqz-runs/run-0123abcd4567"),
        ("rm", "delete a run folder and everything in it", "the run folder to delete"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("url", help=what)
        add_s3_endpoint(action)
        if name == "show":
            action.add_argument("--json", action="store_true", help="print everything as one JSON object")


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def command(args: argparse.Namespace) -> int:
    from sqz.runs import catalog

    use_s3_endpoint(args)
    if args.action == "ls":
        runs = catalog.list_runs(args.url)
        print_table(["run", "kind", "model", "data", "epochs", "trials", "report", "files", "bytes"],
                    [[r["run_id"], r["kind"], r["model"], r["data"], r["epochs"], r["trials"], "yes" if r["reported"] else "no",
                      r["files"], f"{r['bytes']:,}"] for r in runs], align="llll" + "r" * 5)  # fmt: skip
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
                columns = [c for c in rows[0] if c != "run_id"]
                print_table(columns, [[_cell(row[c]) for c in columns] for row in rows], align="r" * len(columns))
    else:
        removed = catalog.delete_run(args.url)
        print(f"deleted {args.url} ({removed} files)")
    return 0

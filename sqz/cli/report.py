"""`sqz report`: a run's Pareto table and the smallest model within --max-drop, as the
report_saved_run flow (writes report.md and pareto.png)."""

from __future__ import annotations

import argparse
from typing import Any

from sqz.cli.args import non_negative_float
from sqz.cli.flowrun import run_flow
from sqz.cli.tables import print_table

__all__ = ["add_parser", "command", "print_report"]


def add_parser(sub: Any) -> None:
    report = sub.add_parser("report", help="print a run's Pareto table and the smallest model within --max-drop; "
                            "writes report.md and pareto.png")  # fmt: skip
    report.add_argument("run_url", help="the run folder, e.g. ./sqz-runs/run-0123abcd4567")
    report.add_argument("--max-drop", type=non_negative_float, default=None,
                        help="top-1 points the named smallest model may lose (default: the run's, else 1.0)")  # fmt: skip


def print_report(summary: dict[str, Any]) -> None:
    """What sqz.report.report_run_folder returns, for a terminal."""
    for line in summary["lines_before"]:
        print(line)
    print_table(summary["pareto_headers"], summary["pareto_rows"], align="ll" + "r" * 7)
    for line in summary["lines_after"]:
        print(line)
    if summary["report_url"]:
        print(f"pareto plot: {summary['plot_url']}\nreport: {summary['report_url']}", flush=True)


def command(args: argparse.Namespace) -> int:
    from sqz.report import check_run_folder

    check_run_folder(args.run_url)  # not a run: one line, before Prefect starts

    def flow():
        from flows.report_flow import report_saved_run

        return report_saved_run

    run_id = args.run_url.rstrip("/").rsplit("/", 1)[-1]
    print_report(run_flow(flow, f"{run_id}/report", run_url=args.run_url, max_drop=args.max_drop))
    return 0

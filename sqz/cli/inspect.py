"""`sqz inspect`: the per-layer byte account of a .sqz file (read-only: sqz.byte_account)."""

from __future__ import annotations

import argparse
from typing import Any

from sqz.cli.tables import print_table

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    inspect = sub.add_parser("inspect", help="print the per-layer byte account of a .sqz file")
    inspect.add_argument("file", help="path or s3:// URL of a .sqz file")


def command(args: argparse.Namespace) -> int:
    from sqz.byte_account import byte_account

    account = byte_account(args.file)
    rows = [[r["layer"], r["shape"], f"{r['weights']:,}", f"{r['nonzero']:,}", r["bits"], f"{r['code_bytes']:,}",
             f"{r['index_bytes']:,}", f"{r['overhead_bytes']:,}", f"{r['entropy_bound_bytes']:,.0f}",
             " | ".join(m for m in (r["codes_model"], r["positions_model"], r["codebook_model"]) if m)]
            for r in account["layers"]]  # fmt: skip
    t = account["totals"]
    rows.append(["total", "", f"{t['weights']:,}", f"{t['nonzero']:,}", "", f"{t['code_bytes']:,}", f"{t['index_bytes']:,}",
                 f"{t['overhead_bytes']:,}", f"{t['entropy_bound_bytes']:,.0f}", ""])  # fmt: skip
    headers = ["layer", "shape", "weights", "nonzero", "bits", "codes", "indices", "other", "entropy",
               "model (codes | positions | codebook)"]  # fmt: skip
    print_table(headers, rows, align="l" + "r" * 8 + "l")
    version = account["format_version"] if account["format_version"] is not None else "?"
    print(f"format version {version}; header {account['header_bytes']:,} bytes; file: {account['file_bytes']:,} bytes")
    return 0

"""`sqz models`: the paper's Table 2 as built (read-only: sqz.table2)."""

from __future__ import annotations

import argparse
from typing import Any

from sqz.cli.tables import print_table

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the paper's Table 2 as built: parameters, float32 MB, reduction vs AlexNet",
                            description="Parameters, float32 size and reduction vs 32-bit AlexNet of torchvision's "
                            "reference CNNs and every registered SqueezeNet, computed from the built architectures, "
                            "with published accuracies cited per row.")  # fmt: skip
    models.add_argument("--with", dest="with_files", action="append", default=[], metavar="FILE",
                        help="a compressed .sqz file (path or s3:// URL) whose real size joins the table; repeatable")  # fmt: skip


def command(args: argparse.Namespace) -> int:
    from sqz import table2

    extra = [table2.compressed_row(url) for url in args.with_files]  # a bad file fails before printing
    rows = table2.architecture_rows() + extra
    alexnet = table2.alexnet_float32_bytes()
    print(f"Table 2 as built: float32 = 4 bytes/parameter, MB = 10^6 bytes; reduction vs 32-bit AlexNet "
          f"({alexnet // 4:,} parameters, {alexnet / 1e6:.2f} MB)")  # fmt: skip
    cells = [[row.model, f"{row.parameters:,}", f"{row.size_bytes / 1e6:.3f}", f"{row.ratio_vs_alexnet:.1f}x",
              f"{row.accuracy[0]:.1f} / {row.accuracy[1]:.1f}" if row.accuracy else "-", row.accuracy_source or "-"]
             for row in rows]  # fmt: skip
    print_table(["model", "parameters", "MB", "vs AlexNet", "top-1/top-5", "accuracy as published by"], cells, align="lrrrrl")
    notes = [f"  {row.model}: {row.note}" for row in rows if row.note]
    if notes:
        print("\n".join(["notes:", *notes]))
    print("  Inception-v4 is not in torchvision: not listed. The paper (Table 2) prints AlexNet 240 MB "
          "57.2/80.3, SqueezeNet 4.8 MB (50x), + Deep Compression 0.66 MB (363x, 8-bit) and 0.47 MB (510x, 6-bit).")
    return 0

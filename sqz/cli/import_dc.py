"""`sqz import-dc`: the released Deep Compression SqueezeNet as .sqz, as the
import_released flow."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from sqz.cli.args import non_negative_int, positive_int
from sqz.cli.flowrun import run_flow

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    from sqz.config import ImportOptions

    import_dc = sub.add_parser("import-dc", help="convert the released Deep Compression .net file to .sqz",
                               description="Read the Deep Compression authors' compressed_SqueezeNet.net into "
                               "squeezenet1_0 and re-encode the same weights, losslessly, as .sqz.")  # fmt: skip
    import_dc.add_argument("file", help="path or URL of compressed_SqueezeNet.net")
    import_dc.add_argument("out", help="path or URL of the .sqz file to write")
    import_dc.add_argument("--bits", type=positive_int, default=None,
                           help="re-cluster each layer's non-zero weights into 2^BITS values (same sparsity) "
                           "instead of keeping the released 8-bit codebooks")  # fmt: skip
    import_dc.add_argument("--method", choices=["auto", "exact", "lloyd"], default="exact", help="k-means for --bits (default: exact)")
    defaults = ImportOptions()
    import_dc.add_argument("--calibrate", default=None, metavar="SRC",
                           help="calibrate on images and report fidelity to the dense model on held-out ones: photos "
                           "(real photos shipped in scikit-image/scikit-learn/matplotlib), a folder of images, or a "
                           "prepared dataset (folder or s3://)")  # fmt: skip
    import_dc.add_argument("--size-budget", type=positive_int, default=None, metavar="BYTES",
                           help="pick each layer's bits (3..8) so the file fits BYTES, maximising fidelity")  # fmt: skip
    import_dc.add_argument("--weighting", choices=["fisher", "none"], default=None,
                           help=f"with --calibrate: k-means error weighting (default: {defaults.weighting})")
    import_dc.add_argument("--distill-steps", type=non_negative_int, default=None,
                           help=f"with --calibrate: centroid distillation steps (default: {defaults.distill_steps})")
    import_dc.add_argument("--assign", choices=["nearest", "gptq"], default=None,
                           help="with --calibrate: each weight takes its nearest shared value, or GPTQ's error-compensated "
                           f"choice from the layer's calibration inputs (default: {defaults.assign})")  # fmt: skip
    import_dc.add_argument("--gptq-inputs", choices=["sequential", "dense"], default=defaults.gptq_inputs,
                           help="with --assign gptq: each layer's inputs from the already re-assigned earlier layers "
                           f"(sequential) or from the dense model (default: {defaults.gptq_inputs})")  # fmt: skip
    import_dc.add_argument("--distill-lr", type=float, default=defaults.distill_lr,
                           help=f"with --calibrate: Adam lr of the distillation (default: {defaults.distill_lr:g})")
    import_dc.add_argument("--budget-kl-images", type=non_negative_int, default=defaults.budget_kl_images, metavar="N",
                           help="with --calibrate and --size-budget: scale each layer's costs by its KL at 4 bits, "
                           "measured on N calibration images (~4 more minutes at 96; lower KL, see docs/fidelity.md; "
                           f"default: {defaults.budget_kl_images}, unscaled)")  # fmt: skip
    import_dc.add_argument("--allocator", choices=["measured", "fisher"], default=defaults.allocator,
                           help="with --calibrate and --size-budget: measured (greedy removal of bits where the KL measured "
                           "on calibration crops rises least per byte saved; never worse there than the best uniform width "
                           "at no more bytes) or fisher (knapsack over Fisher-predicted costs) "
                           f"(default: {defaults.allocator})")  # fmt: skip
    import_dc.add_argument("--allocator-images", type=positive_int, default=defaults.allocator_images, metavar="N",
                           help=f"with --allocator measured: calibration crops its KLs are measured on (default: {defaults.allocator_images})")
    import_dc.add_argument("--confident", type=float, default=defaults.confident, metavar="P",
                           help="fidelity is also reported on the held-out crops whose dense top-1 probability is at least "
                           f"P, in (0, 1) (default: {defaults.confident:g})")  # fmt: skip
    import_dc.add_argument("--calibration-images", type=positive_int, default=defaults.calibration_images,
                           help=f"calibration images used, a fixed subset (default: {defaults.calibration_images})")
    import_dc.add_argument("--run", default=None, help="run URL whose fidelity table gets the row "
                           "(default: the output's run, else ./sqz-runs/evaluations)")  # fmt: skip


def command(args: argparse.Namespace) -> int:
    import dataclasses
    import posixpath

    from sqz import storage
    from sqz.config import ImportOptions

    # What it reads and where it writes, checked before Prefect starts (else: a flow run and its retries).
    storage.check_url(args.file, option="FILE")
    if not storage.exists(args.file):
        raise ValueError(f"FILE: no such file: {args.file}")
    storage.check_url(args.out, option="OUT")
    storage.check_writable_folder(posixpath.dirname(storage.absolute(args.out)), option="OUT")
    if args.run is not None:
        storage.check_writable_folder(args.run, option="--run")

    if args.calibrate is None and (args.weighting is not None or args.distill_steps is not None or args.assign is not None):
        raise ValueError("--weighting/--distill-steps/--assign: need --calibrate (the images they are computed on)")
    defaults = ImportOptions()
    options = ImportOptions(bits=args.bits, method=args.method, calibrate=args.calibrate, size_budget=args.size_budget,
                            weighting=args.weighting or defaults.weighting, distill_lr=args.distill_lr,
                            distill_steps=defaults.distill_steps if args.distill_steps is None else args.distill_steps,
                            calibration_images=args.calibration_images, assign=args.assign or defaults.assign,
                            gptq_inputs=args.gptq_inputs, budget_kl_images=args.budget_kl_images, allocator=args.allocator,
                            allocator_images=args.allocator_images, confident=args.confident)  # fmt: skip  # every bad value fails here
    if options.calibrate is not None:
        from sqz.fidelity import check_calibration_source  # torch: only when calibrating

        check_calibration_source(options.calibrate)  # a missing folder or dataset: one line, before Prefect
    parameters = {k: v for k, v in dataclasses.asdict(options).items()
                  if k in ("bits", "method", "calibrate", "size_budget", "weighting", "distill_steps", "distill_lr",
                           "calibration_images", "assign", "gptq_inputs", "budget_kl_images", "allocator",
                           "allocator_images", "confident")}  # fmt: skip

    def flow():
        from flows.compress_flow import import_released

        return import_released

    if options.size_budget is not None:
        # The smallest possible file needs the model read (torch): a core check, run here so
        # that an impossible budget is one line before any flow run begins.
        from sqz.import_dc import check_size_budget

        check_size_budget(args.file, options)
    name = f"import-dc-{args.out.rstrip('/').rsplit('/', 1)[-1]}"
    summary = run_flow(flow, name, file_url=args.file, out_url=args.out, run_url=args.run, **parameters)
    reclustered = options.bits is not None or options.size_budget is not None
    if reclustered:
        how = (f"{options.weighting}-weighted" if options.calibrate else "weight-MSE") + f" {options.method} k-means"
        if options.uses_gptq:
            how += f", GPTQ assignment ({options.gptq_inputs} inputs{', codebooks refitted' if options.gptq_refit else ''})"
        if options.uses_distillation:
            how += f", centroids distilled {options.distill_steps} steps"
        widths = (f"per-layer bits {dict(sorted(Counter(summary['layer_bits'].values()).items()))} (bits: layers)"
                  if summary["layer_bits"] else f"{options.bits} bits")  # fmt: skip
        if summary.get("allocator"):
            how += ", widths by the measured allocator"
            print(f"allocator check on {summary['allocator']['check_images']} calibration crops: {summary['allocator']['summary']}")
        print(f"re-clustered at {widths} ({how}): weight error {100 * summary['weight_error']:.2f}% "
              "(relative RMS over all weights)")  # fmt: skip
    what = "the re-clustered weights" if reclustered else "the released weights"
    print(f"{args.file}: {summary['source_bytes']:,} bytes -> {args.out}: {summary['size_bytes']:,} bytes "
          f"({100 * summary['size_bytes'] / summary['source_bytes']:.1f}%), decodes to {what} bit-exact: {summary['bit_exact']}")  # fmt: skip
    fid = summary["fidelity"]
    if fid is not None:
        from sqz.fidelity import fidelity_line  # torch: already loaded by the flow

        print(f"fidelity vs the dense model on {fid['images']} held-out images ({args.calibrate}): {fidelity_line(fid)}")
        print(f"row: {summary['row_url']}")
    return 0 if summary["bit_exact"] else 1

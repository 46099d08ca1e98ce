"""`sqz eval`: top-1/top-5 of a model file on a dataset, as the evaluate_model flow."""

from __future__ import annotations

import argparse
from typing import Any

from sqz.cli.args import non_negative_int, positive_int
from sqz.cli.flowrun import run_flow
from sqz.cli.options import add_s3_endpoint, use_s3_endpoint

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    evaluate = sub.add_parser(
        "eval", help="top-1/top-5 of a model file on a dataset; appends to the evaluations table",
        description="Evaluate a .sqz file (decoded) or dense safetensors weights on a dataset split, print top-1 "
        "and top-5, and write the row to <run>/metrics/evaluations/.",
    )  # fmt: skip
    evaluate.add_argument("model", help="a .sqz file or .safetensors weights (path or s3:// URL)")
    evaluate.add_argument("--data", required=True, help="digits | synthetic | an ImageNet-layout folder | a prepared dataset (folder or s3://)")
    evaluate.add_argument("--split", choices=["train", "val"], default="val", help="split to evaluate (default: val)")
    evaluate.add_argument("--arch", default=None, help="architecture of safetensors weights (default: from the run manifest)")
    evaluate.add_argument("--image-size", type=positive_int, default=None, help="crop size (default: what the file records, else the model's)")
    evaluate.add_argument("--normalize", choices=["torchvision", "caffe"], default=None,
                          help="input convention (default: what the file records, else torchvision)")  # fmt: skip
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    evaluate.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes (default: 0)")
    evaluate.add_argument("--run", default=None, help="run URL whose evaluations table gets the row "
                          "(default: the model's run, else ./sqz-runs/evaluations)")  # fmt: skip
    add_s3_endpoint(evaluate)


def command(args: argparse.Namespace) -> int:
    from sqz.evaluation import plan_evaluation

    use_s3_endpoint(args)
    if args.run is not None:
        from sqz.storage import check_writable_folder

        check_writable_folder(args.run, option="--run")  # else found only when the row is written, after the evaluation
    # A wrong file, data, architecture or class count fails here, before Prefect starts.
    plan = plan_evaluation(args.model, args.data, split=args.split, arch=args.arch, image_size=args.image_size,
                           normalization=args.normalize, batch_size=args.batch_size)  # fmt: skip

    def flow():
        from flows.eval_flow import evaluate_model

        return evaluate_model

    name = f"eval-{args.model.rstrip('/').rsplit('/', 1)[-1]}-{args.split}"
    row = run_flow(flow, name, model_url=args.model, data_url=args.data, split=args.split, arch=plan["arch"],
                   image_size=plan["image_size"], normalization=plan["normalization"], batch_size=args.batch_size,
                   workers=args.workers, run_url=args.run)  # fmt: skip
    print(f"{args.model} on {args.data} ({args.split}, {row['image_size']}px, {row['normalization']}): "
          f"top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}  over {row['images']:,} images, "
          f"{row['skipped']} unreadable skipped")  # fmt: skip
    print(f"row: {row['row_url']}")
    return 0

"""The ``sqz`` command. The only sqz module that may import flows/ (lazily, per command),
so ``sqz --help`` and input errors answer without loading Ray or Prefect."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

__all__ = ["main", "prefect_defaults"]


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line naming the option (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _list_of(kind: Callable[[str], Any], option: str, check: Callable[[Any], str | None]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = []
        for item in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            try:
                value = kind(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {kind.__name__}") from None
            problem = check(value)
            if problem:
                raise argparse.ArgumentTypeError(f"{item}: {problem}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return tuple(values)

    parse.__name__ = option
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sqz", description="SqueezeNet + Deep Compression: train with Ray Train, sweep "
                     "pruning x bits with Ray Tune, chained as Prefect flows, real bytes on disk.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the whole pipeline (train -> sweep -> report)",
                         description="Train a SqueezeNet, sweep pruning thresholds x bit widths, and report the "
                         "smallest variant within the accuracy budget. With no options: scikit-learn's digits, "
                         "a local Ray and Prefect's ephemeral API, results under ./sqz-runs/<run_id>/.")  # fmt: skip
    run.add_argument("--data", default="digits", help="digits | synthetic | a folder with train/ and val/ (default: digits)")
    run.add_argument("--storage", default="./sqz-runs", help="root URL for runs: a local path or s3://bucket/prefix (default: ./sqz-runs)")
    run.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)")
    run.add_argument("--model", default="squeezenet_small", help="model name from `sqz models` (default: squeezenet_small)")
    run.add_argument("--workers", type=_positive_int, default=2, help="Ray Train workers (default: 2)")
    run.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (default: 8)")
    run.add_argument("--lr", type=float, default=None, help="training learning rate (default: the optimizer's)")
    run.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="training optimizer (default: adamw)")
    run.add_argument("--thresholds", type=_list_of(float, "--thresholds", lambda v: "must be >= 0" if not v >= 0 else None),
                     default=(0.3, 0.6, 0.9), help="pruning thresholds, comma-separated (q x layer std by default; default: 0.3,0.6,0.9)")  # fmt: skip
    run.add_argument("--prune-mode", choices=["std", "absolute", "density"], default="std",
                     help="how thresholds are read: q x layer std, absolute |w|, or kept density (default: std)")  # fmt: skip
    run.add_argument("--bits", type=_list_of(int, "--bits", lambda v: None if 1 <= v <= 8 else "must be in 1..8"),
                     default=(8, 5), help="bit widths, comma-separated, each in 1..8 (default: 8,5)")  # fmt: skip
    run.add_argument("--retrain-epochs", type=_non_negative_int, default=2, help="masked retraining epochs per trial (default: 2)")
    run.add_argument("--finetune-epochs", type=_non_negative_int, default=1, help="centroid fine-tuning epochs per trial (default: 1)")
    run.add_argument("--max-concurrent", type=_positive_int, default=2, help="sweep trials at once (default: 2)")
    run.add_argument("--max-drop", type=float, default=1.0, help="top-1 points the chosen variant may lose (default: 1.0)")
    run.add_argument("--ray-address", default=None, help="Ray cluster to use (ray://host:10001 or auto); default: start a local Ray")
    run.add_argument("--run-id", default=None, help="run folder name (default: derived from the config, so reruns resume)")

    inspect = sub.add_parser("inspect", help="print the per-layer byte account of a .sqz file")
    inspect.add_argument("file", help="path or s3:// URL of a .sqz file")

    report = sub.add_parser("report", help="print a finished run's report.md")
    report.add_argument("run_url", help="the run folder, e.g. ./sqz-runs/run-0123abcd4567")

    sub.add_parser("models", help="list the registered models and their parameter counts")

    import_dc = sub.add_parser("import-dc", help="convert the released Deep Compression .net file to .sqz",
                               description="Read the Deep Compression authors' compressed_SqueezeNet.net into "
                               "squeezenet1_0 and re-encode the same weights, losslessly, as .sqz.")  # fmt: skip
    import_dc.add_argument("file", help="path or URL of compressed_SqueezeNet.net")
    import_dc.add_argument("out", help="path or URL of the .sqz file to write")

    from sqz.runs_cli import add_runs_parser

    add_runs_parser(sub)
    return parser


def _pipeline_config(args: argparse.Namespace):
    from sqz.config import DataConfig, PipelineConfig, QuantConfig, SweepConfig, TrainConfig
    from sqz.data import check_data_url, num_classes_of
    from sqz.models import list_models
    from sqz.storage import check_url

    check_data_url(args.data)
    check_url(args.storage, option="--storage")
    if args.model not in list_models():
        raise ValueError(f"--model: unknown model {args.model!r}; choose one of {', '.join(list_models())}")
    if args.run_id is not None and not args.run_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--run-id: {args.run_id!r} must be letters, digits, '-' or '_'")
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adamw" else 0.04)
    return PipelineConfig(
        data=DataConfig(url=args.data),
        train=TrainConfig(model=args.model, num_classes=num_classes_of(DataConfig(url=args.data)),
                          epochs=args.epochs, optimizer=args.optimizer, lr=lr, workers=args.workers),
        sweep=SweepConfig(thresholds=args.thresholds, bits=args.bits, prune_mode=args.prune_mode,
                          retrain_epochs=args.retrain_epochs, max_concurrent=args.max_concurrent,
                          max_top1_drop=args.max_drop, quant=QuantConfig(finetune_epochs=args.finetune_epochs)),
        storage_url=args.storage,
    )  # fmt: skip


def _summary_table(summary: dict[str, Any]) -> str:
    from sqz.report import trials_table

    base, chosen = summary["baseline"], summary["chosen"]
    lines = [
        f"run {summary['run_id']}",
        f"baseline {base['model']}: {base['parameters']:,} parameters, {base['size_bytes']:,} bytes (float32), "
        f"top-1 {base['top1']:.2f}, top-5 {base['top5']:.2f}",
        trials_table(summary["trials"], chosen["trial_id"] if chosen else None),
    ]
    if chosen:
        lines.append(
            f"chosen: {chosen['trial_id']} - {chosen['size_bytes']:,} bytes, top-1 {chosen['top1']:.2f}, "
            f"{base['size_bytes'] / chosen['size_bytes']:.1f}x smaller than the float32 baseline "
            f"({chosen['ratio_vs_alexnet_32bit']:,.0f}x vs 32-bit AlexNet)"
        )
    else:
        lines.append("chosen: none within the accuracy budget")
    if "stage_seconds" in summary:
        lines.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"].items()))
    lines.append(f"report: {summary['report_url']}")
    return "\n".join(lines)


def prefect_defaults() -> None:
    """Environment Prefect reads at import; call before importing flows/ (CLI and bench)."""
    # The ephemeral API needs ~13 s to start on 2 cores, close to Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # sqz's own warnings (e.g. a storage operation retried) go to the flow run's logs too.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sqz")
    if os.environ.get("PREFECT_HOME"):
        # Prefect creates its home without parents; a fresh ./.work/prefect would fail.
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)


def _cmd_run(args: argparse.Namespace) -> int:
    config = _pipeline_config(args)  # every bad value fails here, before Ray or Prefect start
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint  # inherited by Ray's workers
    prefect_defaults()
    from flows.pipeline_flow import squeeze_pipeline
    from sqz.config import config_to_dict

    summary = squeeze_pipeline(config=config_to_dict(config), run_id=args.run_id,
                               ray_address=args.ray_address, workdir=".")  # fmt: skip
    print(_summary_table(summary), flush=True)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sqz import storage
    from sqz.compress.codec import layer_sizes

    data = storage.read_bytes(args.file)
    rows = layer_sizes(data)
    print(f"{'layer':32} {'shape':>16} {'weights':>9} {'nonzero':>9} {'bits':>4} {'codes':>8} {'indices':>8} {'other':>6} {'entropy':>9}")
    for r in rows:
        print(f"{r['layer']:32} {r['shape']:>16} {r['weights']:>9,} {r['nonzero']:>9,} {r['bits']:>4} "
              f"{r['code_bytes']:>8,} {r['index_bytes']:>8,} {r['overhead_bytes']:>6,} {r['entropy_bound_bytes']:>9,.0f}")  # fmt: skip
    print(f"file: {len(data):,} bytes")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sqz import storage

    print(storage.read_bytes(storage.join(args.run_url, "report", "report.md")).decode(), end="")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sqz.models import MODEL_FACTS, build_model, count_parameters, list_models

    print(f"{'model':32} {'params (1000 cls)':>18} {'MB float32':>10}  source")
    for name in list_models():
        params = count_parameters(build_model(name, num_classes=1000))
        print(f"{name:32} {params:>18,} {params * 4 / 1e6:>10.2f}  {MODEL_FACTS[name].source}")
    return 0


def _cmd_import_dc(args: argparse.Namespace) -> int:
    from sqz import storage
    from sqz.compress.codec import decode, encode
    from sqz.compress.dcnet import load_dcnet

    source = storage.read_bytes(args.file)
    model = load_dcnet(source)
    data = encode(model, meta={"source": "Deep Compression release, compressed_SqueezeNet.net"})
    decoded = decode(data)  # prove the file before reporting it
    exact = all(a.equal(b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
    storage.write_bytes(args.out, data)
    print(f"{args.file}: {len(source):,} bytes -> {args.out}: {len(data):,} bytes "
          f"({100 * len(data) / len(source):.1f}%), weights bit-exact: {exact}")  # fmt: skip
    return 0 if exact else 1


_COMMANDS = {"run": _cmd_run, "import-dc": _cmd_import_dc, "inspect": _cmd_inspect, "report": _cmd_report, "models": _cmd_models}


def _cmd_runs(args: argparse.Namespace) -> int:
    from sqz.runs_cli import cmd_runs

    return cmd_runs(args)


_COMMANDS["runs"] = _cmd_runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one line naming what was wrong, no traceback.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sqz {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""From the trials table to a decision: Pareto frontier, chosen variant, markdown report,
and pareto.png (size in bytes vs top-1, with the paper's operating points for scale)."""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

__all__ = [
    "ALEXNET_FLOAT32_BYTES",
    "PAPER_SQUEEZENET_MB",
    "PAPER_OPERATING_POINTS",
    "paper_reference_points",
    "pareto_frontier",
    "choose_variant",
    "trials_table",
    "pareto_table",
    "pareto_png",
    "render_report",
    "write_run_report",
    "load_run",
    "format_run_summary",
    "pareto_rows",
    "trial_rows",
    "summary_lines",
    "report_run_folder",
    "check_run_folder",
    "report_trials",
    "REPORT_ALL_TRIALS_MAX",
]

# 32-bit AlexNet, the paper's reference for every compression ratio: 61.1 M parameters
# x 4 bytes (DESIGN.md, reference facts; "240 MB" in the paper).
ALEXNET_FLOAT32_BYTES = 61_100_000 * 4

# SqueezeNet paper, Table 2: the dense float32 SqueezeNet is 4.8 MB; with Deep Compression
# at 33% density it is 0.66 MB with 8-bit and 0.47 MB with 6-bit weights, top-1 unchanged
# (57.5%). As ratios they carry over to any baseline: size x 0.66 / 4.8 (1/7.3) and
# size x 0.47 / 4.8 (1/10.2).
PAPER_SQUEEZENET_MB = 4.8
PAPER_OPERATING_POINTS: tuple[tuple[str, float], ...] = (("8-bit, 33% density", 0.66), ("6-bit, 33% density", 0.47))


def paper_reference_points(float32_bytes: int) -> list[dict[str, Any]]:
    """The paper's two operating points as the same ratios of ``float32_bytes``."""
    return [
        {"label": label, "paper_mb": mb, "ratio": PAPER_SQUEEZENET_MB / mb,
         "size_bytes": round(float32_bytes * mb / PAPER_SQUEEZENET_MB)}
        for label, mb in PAPER_OPERATING_POINTS
    ]  # fmt: skip


def pareto_frontier(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both size (smaller) and top-1 (higher), by size."""
    frontier: list[dict[str, Any]] = []
    for trial in sorted(trials, key=lambda t: (t["size_bytes"], -t["top1"])):
        if not frontier or trial["top1"] > frontier[-1]["top1"]:
            frontier.append(trial)
    return frontier


def choose_variant(trials: Sequence[dict[str, Any]], baseline_top1: float, max_drop: float) -> dict[str, Any] | None:
    """The smallest trial whose top-1 is within ``max_drop`` points of the baseline."""
    eligible = [t for t in trials if t["top1"] >= baseline_top1 - max_drop]
    return min(eligible, key=lambda t: (t["size_bytes"], -t["top1"])) if eligible else None


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _per_layer(trial: dict[str, Any]) -> bool:
    return bool(trial.get("layer_settings"))


def _threshold_text(trial: dict[str, Any]) -> str:
    if _per_layer(trial):
        return f"per-layer ({trial.get('target') or 'chosen'})"
    return f"{trial['threshold']:g}"


def _grid_order(trial: dict[str, Any]) -> tuple:
    # Grid points by threshold then widest bits first; per-layer trials (NaN threshold) last.
    threshold = trial["threshold"]
    per_layer = _per_layer(trial) or threshold is None or math.isnan(threshold)
    return (per_layer, 0.0 if per_layer else threshold, -trial["bits"], trial["trial_id"])


TRIAL_HEADERS = ["trial", "threshold", "bits", "density", "bytes", "top-1", "top-5", "vs AlexNet"]


def trials_table(trials: Sequence[dict[str, Any]], chosen_id: str | None = None) -> str:
    """Every trial as a markdown table (report.md)."""
    return _table(TRIAL_HEADERS, trial_rows(trials, chosen_id))


def trial_rows(trials: Sequence[dict[str, Any]], chosen_id: str | None = None) -> list[list[str]]:
    """Every trial in grid order, one row of cells under TRIAL_HEADERS (* = chosen)."""
    rows = []
    for t in sorted(trials, key=_grid_order):
        mark = " *" if t["trial_id"] == chosen_id else ""
        rows.append([
            f"{t['trial_id']}{mark}", _threshold_text(t), str(t["bits"]), f"{t['density']:.3f}",
            f"{t['size_bytes']:,}", f"{t['top1']:.2f}", f"{t['top5']:.2f}", f"{t['ratio_vs_alexnet_32bit']:,.0f}x",
        ])  # fmt: skip
    return rows


def _float32_bytes(baseline: dict[str, Any]) -> int:
    return 4 * int(baseline["parameters"])


PARETO_HEADERS = ["trial", "threshold", "bits", "density", "bytes", "vs float32", "top-1", "Δ top-1", "top-5"]


def pareto_table(trials: Sequence[dict[str, Any]], baseline: dict[str, Any], chosen_id: str | None = None) -> str:
    """The frontier as a markdown table (report.md)."""
    return _table(PARETO_HEADERS, pareto_rows(trials, baseline, chosen_id))


def pareto_rows(trials: Sequence[dict[str, Any]], baseline: dict[str, Any], chosen_id: str | None = None) -> list[list[str]]:
    """The frontier, smallest first, against the baseline (float32 size, top-1): one row
    of cells per trial, under PARETO_HEADERS."""
    dense = _float32_bytes(baseline)
    rows = []
    for t in pareto_frontier(trials):
        mark = " *" if t["trial_id"] == chosen_id else ""
        rows.append([
            f"{t['trial_id']}{mark}", _threshold_text(t), str(t["bits"]), f"{t['density']:.3f}",
            f"{t['size_bytes']:,}", f"{dense / t['size_bytes']:.1f}x", f"{t['top1']:.2f}",
            f"{t['top1'] - baseline['top1']:+.2f}", f"{t['top5']:.2f}",
        ])  # fmt: skip
    return rows


def pareto_png(trials: Sequence[dict[str, Any]], baseline: dict[str, Any], *, chosen: dict[str, Any] | None = None,
               max_drop: float | None = None) -> bytes:  # fmt: skip
    """pareto.png: every trial (size in bytes, log scale, vs top-1), the frontier, the
    float32 baseline, and the paper's two operating points as ratios of our baseline."""
    # The Figure API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    dense = _float32_bytes(baseline)
    frontier = pareto_frontier(trials)
    on_frontier = {t["trial_id"] for t in frontier}
    grid = [t for t in trials if not _per_layer(t)]
    # Off the frontier: small and faint (a thousand points must not hide the frontier);
    # on it: the same colour per bit width, larger, outlined.
    faint = dict(s=10, alpha=0.35) if len(trials) > REPORT_ALL_TRIALS_MAX else dict(s=24, alpha=0.7)
    for bits in sorted({t["bits"] for t in grid}, reverse=True):
        group = [t for t in grid if t["bits"] == bits]
        dots = ax.scatter([t["size_bytes"] for t in group if t["trial_id"] not in on_frontier],
                          [t["top1"] for t in group if t["trial_id"] not in on_frontier], label=f"{bits}-bit grid", **faint)  # fmt: skip
        best = [t for t in group if t["trial_id"] in on_frontier]
        if best:
            ax.scatter([t["size_bytes"] for t in best], [t["top1"] for t in best], s=46, color=dots.get_facecolor()[0][:3],
                       edgecolors="black", linewidths=0.8, zorder=3)  # fmt: skip
    per_layer = [t for t in trials if _per_layer(t)]
    if per_layer:
        ax.scatter([t["size_bytes"] for t in per_layer], [t["top1"] for t in per_layer], s=40, marker="s",
                   facecolors="none", edgecolors="tab:purple", label="per-layer choice")  # fmt: skip
    if frontier:
        # A step: past each frontier point, nothing larger does better until the next one.
        ax.plot([t["size_bytes"] for t in frontier], [t["top1"] for t in frontier], "-", color="black", lw=1.2,
                drawstyle="steps-post", label=f"Pareto frontier ({len(frontier)} of {len(trials):,})")  # fmt: skip
        every = math.ceil(len(frontier) / PLOT_LABELS_MAX)
        for t in frontier[::every]:
            ax.annotate(t["trial_id"], (t["size_bytes"], t["top1"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.scatter([dense], [baseline["top1"]], marker="*", s=160, color="tab:red", zorder=3,
               label=f"float32 baseline ({dense:,} B)")  # fmt: skip
    for ref, style in zip(paper_reference_points(dense), ("--", ":")):
        # The paper kept its baseline's top-1 at both points: same ratio, same accuracy.
        ax.axvline(ref["size_bytes"], color="gray", ls=style, lw=1)
        ax.scatter([ref["size_bytes"]], [baseline["top1"]], marker="D", s=50, facecolors="none", edgecolors="gray",
                   label=f"paper {ref['label']}: 1/{ref['ratio']:.1f} of float32, same top-1")  # fmt: skip
    if max_drop is not None:
        ax.axhline(baseline["top1"] - max_drop, color="tab:green", lw=0.8, ls="-.", label=f"baseline - {max_drop:g} pt")
    if chosen is not None:
        ax.scatter([chosen["size_bytes"]], [chosen["top1"]], s=180, facecolors="none", edgecolors="tab:green",
                   linewidths=2, zorder=4, label=f"chosen: {chosen['trial_id']}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("size on disk (bytes, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{baseline.get('model', 'model')}: size vs top-1 ({len(trials)} trials)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_THRESHOLD_MEANINGS = {"std": "q x layer weight std", "density": "share of weights kept",
                       "absolute": "weight magnitude"}  # fmt: skip


def _threshold_meaning(trials: Sequence[dict[str, Any]]) -> str:
    """What the threshold column means for these trials' prune mode(s)."""
    modes = sorted({t.get("prune_mode") or "std" for t in trials}) or ["std"]
    return ", ".join(f"{_THRESHOLD_MEANINGS.get(m, m)} ({m})" if len(modes) > 1 else _THRESHOLD_MEANINGS.get(m, m) for m in modes)


# report.md lists every trial up to this many; a larger sweep's report shows the frontier
# and the chosen variant, and links to the full table (1,024 rows are no report to read).
REPORT_ALL_TRIALS_MAX = 40
# Labels on the plot, at most: beyond a dozen they overlap into a smudge.
PLOT_LABELS_MAX = 12
TRIALS_PARQUET_LINK = "../metrics/sweep_trials/"  # from report/report.md


def report_trials(trials: Sequence[dict[str, Any]], chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The trials a report shows of a large sweep: the frontier, and the chosen variant
    (smallest first)."""
    shown = {t["trial_id"]: t for t in pareto_frontier(trials)}
    if chosen is not None:
        shown.setdefault(chosen["trial_id"], chosen)
    return sorted(shown.values(), key=lambda t: (t["size_bytes"], -t["top1"]))


def _sweep_section(trials: Sequence[dict[str, Any]], chosen: dict[str, Any] | None) -> list[str]:
    chosen_id = chosen["trial_id"] if chosen else None
    if len(trials) <= REPORT_ALL_TRIALS_MAX:
        return [trials_table(trials, chosen_id)]
    shown = report_trials(trials, chosen)
    return [f"{len(trials):,} trials; below the {len(shown)} on the Pareto frontier or chosen. Every trial: "
            f"[metrics/sweep_trials]({TRIALS_PARQUET_LINK}) (Parquet).", "",
            _table(TRIAL_HEADERS, trial_rows(shown, chosen_id))]  # fmt: skip


def render_report(
    *,
    run_id: str,
    baseline: dict[str, Any],
    trials: Sequence[dict[str, Any]],
    chosen: dict[str, Any] | None,
    max_drop: float,
) -> str:
    """The run's report.md: baseline, every trial, the frontier and the chosen variant."""
    frontier_ids = {t["trial_id"] for t in pareto_frontier(trials)}
    references = paper_reference_points(_float32_bytes(baseline))
    parts = [
        f"# sqz run {run_id}",
        "",
        "## Baseline",
        _table(
            ["model", "parameters", "bytes (float32)", "top-1", "top-5"],
            [[baseline["model"], f"{baseline['parameters']:,}", f"{baseline['size_bytes']:,}",
              f"{baseline['top1']:.2f}", f"{baseline['top5']:.2f}"]],
        ),  # fmt: skip
        "",
        f"## Sweep (threshold: {_threshold_meaning(trials)}; * = chosen)",
        *_sweep_section(trials, chosen),
        "",
        f"Pareto frontier (size vs top-1, {len(frontier_ids)} of {len(trials):,} trials): " + ", ".join(sorted(frontier_ids)),
        "",
        pareto_table(trials, baseline, chosen["trial_id"] if chosen else None),
        "",
        "Paper reference (SqueezeNet, Table 2: 4.8 MB float32 -> 0.66 MB at 8-bit, 0.47 MB at 6-bit) as ratios "
        "of this baseline's float32 size: "
        + ", ".join(f"{r['label']} 1/{r['ratio']:.1f} = {r['size_bytes']:,} bytes" for r in references) + ".",
        "",
        "![Pareto frontier](pareto.png)",
        "",
        "## Chosen variant",
    ]  # fmt: skip
    if chosen is None:
        parts.append(f"No trial kept top-1 within {max_drop:g} point(s) of the baseline.")
    else:
        parts.append(
            f"{chosen['trial_id']}: {chosen['size_bytes']:,} bytes, top-1 {chosen['top1']:.2f} "
            f"(baseline {baseline['top1']:.2f}), {baseline['size_bytes'] / chosen['size_bytes']:.1f}x smaller "
            f"than the float32 baseline, {chosen['ratio_vs_alexnet_32bit']:,.0f}x smaller than 32-bit AlexNet."
        )
    return "\n".join(parts) + "\n"


def write_run_report(report_url: str, *, run_id: str, baseline: dict[str, Any],
                     trials: Sequence[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    """Choose the variant, write report.md to ``report_url`` and pareto.png beside it;
    returns the run's summary."""
    from sqz import storage

    chosen = choose_variant(trials, baseline["top1"], max_drop)
    text = render_report(run_id=run_id, baseline=baseline, trials=trials, chosen=chosen, max_drop=max_drop)
    plot_url = storage.join(report_url.rsplit("/", 1)[0], "pareto.png")
    if trials:
        storage.write_bytes(plot_url, pareto_png(trials, baseline, chosen=chosen, max_drop=max_drop))
    storage.write_bytes(report_url, text.encode())
    return {"run_id": run_id, "baseline": baseline, "trials": list(trials), "chosen": chosen,
            "report_url": report_url, "plot_url": plot_url if trials else None, "report_markdown": text}  # fmt: skip


def load_run(run_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(baseline, trials) of a finished run folder, from its files alone: the manifest
    names the model; top-1 comes from the ``evaluations`` table (sweep runs) or the last
    ``train_epochs`` row (pipeline runs); parameters are counted in the baseline file."""
    from safetensors.torch import load as load_safetensors

    from sqz import metrics, storage
    from sqz.runs.manifest import read_manifest

    model = (read_manifest(run_url)["arch"] or {}).get("name", "model")
    baseline_url = storage.join(run_url, "models", "baseline.safetensors")
    tensors = load_safetensors(storage.read_bytes(baseline_url))
    evaluations = [r for r in metrics.read_table(run_url, "evaluations").to_pylist()
                   if r["model"] == "baseline" and r["split"] == "val"]  # fmt: skip
    epochs = metrics.read_table(run_url, "train_epochs").to_pylist()
    if evaluations:
        accuracy = evaluations[-1]
    elif epochs:
        accuracy = max(epochs, key=lambda r: r["epoch"])
    else:
        raise ValueError(f"run {run_url}: no baseline accuracy (neither an evaluations row nor train_epochs)")
    baseline = {
        "model": model, "parameters": sum(t.numel() for t in tensors.values()),
        "size_bytes": storage.size_of(baseline_url), "top1": accuracy["top1"], "top5": accuracy["top5"],
    }  # fmt: skip
    trials = metrics.read_table(run_url, "sweep_trials").to_pylist()
    return baseline, trials


def summary_lines(run_id: str, baseline: dict[str, Any], trials: Sequence[dict[str, Any]], max_drop: float,
                  *, stopped: int = 0) -> tuple[list[str], list[str]]:  # fmt: skip
    """The lines around the Pareto table that ``sqz report`` and ``sqz sweep`` print:
    (before it: run and baseline; after it: the paper's reference sizes and the smallest
    model within ``max_drop`` points of the baseline)."""
    dense = _float32_bytes(baseline)
    chosen = choose_variant(trials, baseline["top1"], max_drop)
    before = [
        f"run {run_id}",
        f"baseline {baseline['model']}: {baseline['parameters']:,} parameters, {dense:,} bytes as float32 "
        f"(file {baseline['size_bytes']:,}), top-1 {baseline['top1']:.2f}, top-5 {baseline['top5']:.2f}",
        f"Pareto frontier (size vs top-1): {len(pareto_frontier(trials))} of {len(trials)} trial(s)"
        + (f", {stopped} more stopped early by ASHA" if stopped else ""),
    ]  # fmt: skip
    after = [
        "paper reference (SqueezeNet 4.8 MB -> 0.66 MB 8-bit, 0.47 MB 6-bit) at this baseline: "
        + ", ".join(f"{r['label']} 1/{r['ratio']:.1f} = {r['size_bytes']:,} bytes" for r in paper_reference_points(dense)),
    ]
    if chosen:
        after.append(
            f"smallest within {max_drop:g} point(s) of the baseline: {chosen['trial_id']} - {chosen['size_bytes']:,} bytes, "
            f"top-1 {chosen['top1']:.2f} ({chosen['top1'] - baseline['top1']:+.2f}), density {chosen['density']:.3f}, "
            f"{dense / chosen['size_bytes']:.1f}x smaller than float32"
        )
    else:
        after.append(f"smallest within {max_drop:g} point(s) of the baseline: none")
    return before, after


def format_run_summary(run_id: str, baseline: dict[str, Any], trials: Sequence[dict[str, Any]], max_drop: float,
                       *, stopped: int = 0) -> str:  # fmt: skip
    """:func:`summary_lines` around the markdown Pareto table, as one text."""
    before, after = summary_lines(run_id, baseline, trials, max_drop, stopped=stopped)
    chosen = choose_variant(trials, baseline["top1"], max_drop)
    return "\n".join([*before, pareto_table(trials, baseline, chosen["trial_id"] if chosen else None), *after])


def check_run_folder(run_url: str) -> None:
    """A one-line ValueError unless ``run_url`` is a run folder (it holds manifest.json)."""
    from sqz import storage

    storage.check_url(run_url, option="run_url")
    if not storage.exists(storage.join(run_url, "manifest.json")):
        raise ValueError(f"run_url: {run_url} is not a run folder (no manifest.json)")


def report_run_folder(run_url: str, max_drop: float | None = None) -> dict[str, Any]:
    """Report a finished run folder from its files: write report.md and pareto.png (when
    it has trials) and return what a terminal shows: the summary lines, the Pareto
    frontier's rows, the chosen trial and the report's URLs. ``max_drop`` defaults to the
    run's own budget, else 1 point."""
    from sqz import metrics, storage
    from sqz.runs.layout import RunLayout
    from sqz.runs.manifest import read_manifest

    check_run_folder(run_url)
    layout = RunLayout(storage.absolute(run_url))
    if max_drop is None:
        max_drop = float(read_manifest(layout.run_url)["config"].get("sweep", {}).get("max_top1_drop", 1.0))
    baseline, trials = load_run(layout.run_url)
    finished = {t["trial_id"] for t in trials}
    stopped = len({r["trial_id"] for r in metrics.read_table(layout.run_url, "sweep_stopped").to_pylist()} - finished)
    chosen = choose_variant(trials, baseline["top1"], max_drop)
    before, after = summary_lines(layout.run_id, baseline, trials, max_drop, stopped=stopped)
    out = {"run_id": layout.run_id, "run_url": layout.run_url, "baseline": baseline, "trials": trials,
           "chosen": chosen, "max_drop": max_drop, "lines_before": before, "lines_after": after,
           "pareto_headers": PARETO_HEADERS, "pareto_rows": pareto_rows(trials, baseline, chosen["trial_id"] if chosen else None),
           "report_url": None, "plot_url": None, "report_markdown": None}  # fmt: skip
    if trials:
        written = write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)
        out.update(report_url=written["report_url"], plot_url=written["plot_url"], report_markdown=written["report_markdown"])
    return out

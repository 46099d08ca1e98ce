"""From the trials table to a decision: Pareto frontier, chosen variant, markdown report."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ALEXNET_FLOAT32_BYTES", "pareto_frontier", "choose_variant", "trials_table", "render_report", "write_run_report"]

# 32-bit AlexNet, the paper's reference for every compression ratio: 61.1 M parameters
# x 4 bytes (DESIGN.md, reference facts; "240 MB" in the paper).
ALEXNET_FLOAT32_BYTES = 61_100_000 * 4


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


def trials_table(trials: Sequence[dict[str, Any]], chosen_id: str | None = None) -> str:
    rows = []
    for t in sorted(trials, key=lambda t: (t["threshold"], -t["bits"])):
        mark = " *" if t["trial_id"] == chosen_id else ""
        rows.append([
            f"{t['trial_id']}{mark}", f"{t['threshold']:g}", str(t["bits"]), f"{t['density']:.3f}",
            f"{t['size_bytes']:,}", f"{t['top1']:.2f}", f"{t['top5']:.2f}", f"{t['ratio_vs_alexnet_32bit']:,.0f}x",
        ])  # fmt: skip
    return _table(["trial", "threshold", "bits", "density", "bytes", "top-1", "top-5", "vs AlexNet"], rows)


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
        "## Sweep (threshold = q x layer weight std; * = chosen)",
        trials_table(trials, chosen["trial_id"] if chosen else None),
        "",
        "Pareto frontier (size vs top-1): " + ", ".join(sorted(frontier_ids)),
        "",
        "## Chosen variant",
    ]
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
    """Choose the variant, write report.md to ``report_url``; returns the run's summary."""
    from sqz import storage

    chosen = choose_variant(trials, baseline["top1"], max_drop)
    text = render_report(run_id=run_id, baseline=baseline, trials=trials, chosen=chosen, max_drop=max_drop)
    storage.write_bytes(report_url, text.encode())
    return {"run_id": run_id, "baseline": baseline, "trials": list(trials), "chosen": chosen,
            "report_url": report_url, "report_markdown": text}  # fmt: skip

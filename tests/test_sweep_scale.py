"""Sweeps at a few dozen trials, without running them (bench/bench_scale.py runs real ones):
metrics compaction (same rows for every reader, crash-safe, a rewrite wins), the plan of a
resumed sweep (only the missing points), and a report, trials artifact and files card
that show the frontier and the chosen variant instead of every trial."""

from __future__ import annotations

import os
import re

import pyarrow.dataset as ds
import pytest

from sqz import metrics, storage
from sqz.config import SweepConfig
from sqz.report import REPORT_ALL_TRIALS_MAX, choose_variant, pareto_frontier, render_report
from sqz.runs import RunLayout
from sqz.runs import compact
from sqz.runs.compact import compact_run_metrics

TRIALS = 48  # 24 densities x {8, 6} bits: past the report's every-trial limit


def _densities() -> tuple[float, ...]:
    return tuple(round(0.1 + 0.03 * i, 2) for i in range(TRIALS // 2))


def _row(run_id: str, density: float, bits: int) -> dict:
    # Size grows with density and bits, top-1 with density: a frontier of several points.
    name = f"density{density:g}-b{bits}"
    return {"run_id": run_id, "trial_id": name, "prune_mode": "density", "threshold": density, "bits": bits,
            "density": density, "size_bytes": int(40_000 * density * bits / 8), "top1": 60 + 35 * density - (8 - bits),
            "top5": 99.0, "ratio_vs_alexnet_32bit": 1000.0, "model_url": f"models/{name}.sqz", "wall_s": 1.0}  # fmt: skip


def _write_trials(run_url: str, rows: list[dict]) -> None:
    for row in rows:
        metrics.write_rows(run_url, "sweep_trials", [row], writer_id=row["trial_id"])
        metrics.write_rows(run_url, "compressed_layers", [
            {"run_id": row["run_id"], "model": row["trial_id"], "layer": f"l{i}", "shape": "[3]", "weights": 3, "nonzero": 2,
             "bits": row["bits"], "code_bytes": 1, "index_bytes": 1, "overhead_bytes": 1, "entropy_bound_bytes": 1.0}
            for i in range(3)], writer_id=row["trial_id"])  # fmt: skip


def _rows(run_url: str, table: str) -> list[str]:
    return sorted(map(repr, (sorted(r.items()) for r in metrics.read_table(run_url, table).to_pylist())))


def _all_rows() -> list[dict]:
    return [_row("r", d, b) for d in _densities() for b in (8, 6)]


def test_compaction_keeps_every_row_for_every_reader(tmp_path):
    run_url = str(tmp_path / "r")
    _write_trials(run_url, _all_rows())
    before = {t: _rows(run_url, t) for t in ("sweep_trials", "compressed_layers")}
    done = {r["table"]: r for r in compact_run_metrics(run_url)}
    assert done["sweep_trials"] == {"table": "sweep_trials", "files_before": TRIALS, "files_after": 1, "rows": TRIALS}
    assert done["compressed_layers"]["rows"] == 3 * TRIALS and done["compressed_layers"]["files_after"] == 1
    for table, rows in before.items():
        assert os.listdir(tmp_path / "r" / "metrics" / table) == [metrics.COMPACTED]
        assert _rows(run_url, table) == rows
    # A plain Parquet reader (pandas, DuckDB, polars) reads the folder: the same rows, once each.
    folder = ds.dataset(str(tmp_path / "r" / "metrics" / "sweep_trials"), format="parquet").to_table().to_pandas()
    assert sorted(folder["trial_id"]) == sorted(r["trial_id"] for r in _all_rows())
    assert metrics.read_writer_rows(run_url, "sweep_trials", writer_id="density0.13-b6")[0] == {**_row("r", 0.13, 6), "target": None,
                                                                                              "layer_settings": None, "node_id": None, "phase_s": None}
    assert metrics.read_writer_rows(run_url, "sweep_trials", writer_id="density0.99-b6") is None
    # Compacting again changes nothing.
    assert compact_run_metrics(run_url)[0]["files_after"] == 1 and _rows(run_url, "sweep_trials") == before["sweep_trials"]


def test_compaction_killed_half_way_loses_nothing_and_a_rewrite_wins(tmp_path, monkeypatch):
    run_url = str(tmp_path / "r")
    _write_trials(run_url, _all_rows()[:30])
    compact_run_metrics(run_url, ("sweep_trials",))
    _write_trials(run_url, _all_rows()[30:])
    before = _rows(run_url, "sweep_trials")
    deleted = []

    def dies_after_five(fs, path):
        if len(deleted) == 5:
            raise KeyboardInterrupt  # the process is stopped mid-way through its deletions
        deleted.append(path)
        fs.delete_file(path)

    monkeypatch.setattr(compact, "_delete_file", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        compact_run_metrics(run_url, ("sweep_trials",))
    monkeypatch.undo()
    # The new compacted file and 13 of the 18 writer files hold the same rows: each is read once.
    assert len(os.listdir(tmp_path / "r" / "metrics" / "sweep_trials")) == 1 + 18 - 5
    assert _rows(run_url, "sweep_trials") == before
    # A writer that writes again after compaction: its own file wins over the compacted copy.
    rewritten = {**_all_rows()[3], "top1": 12.5}
    metrics.write_rows(run_url, "sweep_trials", [rewritten], writer_id=rewritten["trial_id"])
    rows = metrics.read_table(run_url, "sweep_trials").to_pylist()
    assert len(rows) == TRIALS and [r["top1"] for r in rows if r["trial_id"] == rewritten["trial_id"]] == [12.5]
    assert compact_run_metrics(run_url, ("sweep_trials",))[0] == {"table": "sweep_trials", "files_before": 15,
                                                                   "files_after": 1, "rows": TRIALS}  # fmt: skip
    assert [r["top1"] for r in metrics.read_table(run_url, "sweep_trials").to_pylist() if r["trial_id"] == rewritten["trial_id"]] == [12.5]


def test_a_resumed_sweep_plans_only_the_missing_points(tmp_path):
    from sqz.distributed.sweep import grid_points, missing_points

    layout = RunLayout(str(tmp_path / "r"))
    config = SweepConfig(thresholds=_densities(), bits=(8, 6), prune_mode="density", retrain_steps=2, prune_schedule="oneshot")
    points = grid_points(config)
    assert len(points) == TRIALS
    rows = {r["trial_id"]: r for r in _all_rows()}
    ids = [p["trial_id"] for p in points]
    _write_trials(layout.run_url, [rows[i] for i in ids[:20]])
    compact_run_metrics(layout.run_url)  # an earlier, finished part of the sweep
    _write_trials(layout.run_url, [rows[i] for i in ids[20:30]])  # then killed after 10 more
    metrics.write_rows(layout.run_url, "sweep_stopped", [{"run_id": "r", "trial_id": ids[30], "retrain_epochs_done": 1,
                                                          "top1": 50.0, "reason": "asha"}], writer_id=ids[30])  # fmt: skip
    todo, stopped = missing_points(layout, config, points)
    assert [p["trial_id"] for p in todo] == ids[30:] and stopped == set()
    asha = SweepConfig(thresholds=_densities(), bits=(8, 6), prune_mode="density", retrain_steps=2, prune_schedule="oneshot",
                       scheduler="asha")
    todo, stopped = missing_points(layout, asha, points)
    assert [p["trial_id"] for p in todo] == ids[31:] and stopped == {ids[30]}


def test_a_large_sweeps_report_artifact_and_files_card_show_the_frontier(tmp_path):
    from flows.artifacts import CARD_MODELS_MAX, files_markdown, trials_artifact_rows
    from sqz.report import pareto_png

    trials = _all_rows()
    assert len(trials) > REPORT_ALL_TRIALS_MAX
    baseline = {"model": "squeezenet_small", "parameters": 20_000, "size_bytes": 80_000, "top1": 88.0, "top5": 99.0}
    chosen = choose_variant(trials, baseline["top1"], 2.0)
    frontier = {t["trial_id"] for t in pareto_frontier(trials)}
    assert chosen is not None and 1 < len(frontier) < len(trials)
    text = render_report(run_id="r", baseline=baseline, trials=trials, chosen=chosen, max_drop=2.0)
    sweep_section = text.split("## Sweep", 1)[1].split("Pareto frontier (size vs top-1", 1)[0]
    listed = {re.sub(r" \*$", "", line.split(" | ")[0].lstrip("| ")) for line in sweep_section.splitlines()
              if line.startswith("| density")}  # fmt: skip
    assert listed == frontier | {chosen["trial_id"]}
    assert f"{TRIALS} trials" in text and "](../metrics/sweep_trials/)" in text and f"{chosen['trial_id']} *" in text
    artifact = trials_artifact_rows({"trials": trials, "chosen": chosen})
    assert {r["trial_id"] for r in artifact} == frontier | {chosen["trial_id"]}
    assert [r["trial_id"] for r in artifact if r["chosen"]] == [chosen["trial_id"]] and "model_url" not in artifact[0]
    assert pareto_png(trials, baseline, chosen=chosen, max_drop=2.0).startswith(b"\x89PNG")
    # The files card: the frontier's models linked, the rest counted; the compacted table one link.
    run_url = str(tmp_path / "r")
    for t in trials:
        storage.write_bytes(storage.join(run_url, t["model_url"]), b"s" * 100)
    _write_trials(run_url, trials)
    compact_run_metrics(run_url)
    first = [f"{chosen['trial_id']}.sqz", *sorted(f"{name}.sqz" for name in frontier)]
    card = files_markdown(run_url, models_first=first)
    model_links = re.findall(r"^- \[models/([^]]+)\]", card, flags=re.M)
    assert model_links == list(dict.fromkeys(first))[:CARD_MODELS_MAX] and len(frontier) > CARD_MODELS_MAX
    assert f"and {TRIALS - CARD_MODELS_MAX} more model(s), 2.7 KB in all" in card
    assert re.search(r"`sweep_trials`: 1 file\(s\) \[1\]\(file://[^)]*compacted\.parquet\)$", card, flags=re.M)

"""Progress reaches the driver's log: one line per epoch (from the run's train_epochs
rows) and one per finished sweep trial, with what is left and an ETA."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from sqz import metrics
from sqz.distributed.sweep import _Progress
from sqz.distributed.train import EpochWatcher
from sqz.logs import format_eta


def _epoch_row(epoch: int, wall_s: float) -> dict:
    return {"run_id": "r", "epoch": epoch, "lr": 1e-3, "loss": 1.0 / (epoch + 1), "top1": 50.0 + epoch,
            "top5": 90.0, "images_per_s": 400.0, "data_wait_s": 0.1, "wall_s": wall_s}  # fmt: skip


def test_epoch_watcher_announces_each_new_epoch_once_with_its_eta(tmp_path, caplog):
    run_url = str(tmp_path / "run")
    metrics.write_rows(run_url, "train_epochs", [_epoch_row(0, 99.0)], writer_id="epoch-0000")  # an earlier run's
    seen = []
    watcher = EpochWatcher(run_url, epochs=5, on_epoch=seen.append)
    caplog.set_level(logging.INFO, logger="sqz")
    assert watcher.poll() == []  # epoch 1 was done before: not announced again
    metrics.write_rows(run_url, "train_epochs", [_epoch_row(1, 10.0)], writer_id="epoch-0001")
    metrics.write_rows(run_url, "train_epochs", [_epoch_row(2, 20.0)], writer_id="epoch-0002")
    announced = watcher.poll()
    assert [p["epoch"] for p in announced] == [2, 3] and seen == announced
    # ETA from this run's epochs only: 2 left x mean(10, 20) s.
    assert announced[-1]["eta_s"] == 30.0 and announced[-1]["epochs"] == 5
    assert watcher.poll() == []
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.train"]
    assert len(lines) == 2 and lines[1].startswith("epoch 3/5: loss 0.333, top-1 52.00") and lines[1].endswith("ETA 30s")


def test_epoch_watcher_thread_reports_rows_written_while_it_runs(tmp_path):
    run_url = str(tmp_path / "run")
    seen = []
    with EpochWatcher(run_url, epochs=2, on_epoch=seen.append, interval_s=0.05):
        metrics.write_rows(run_url, "train_epochs", [_epoch_row(0, 1.0)], writer_id="epoch-0000")
        metrics.write_rows(run_url, "train_epochs", [_epoch_row(1, 1.0)], writer_id="epoch-0001")
    assert [p["epoch"] for p in seen] == [1, 2] and seen[-1]["eta_s"] == 0


def test_eta_reads_at_a_glance():
    assert [format_eta(s) for s in (0, 12.4, 245, 3720)] == ["0s", "12s", "4m05s", "1h02m"]


def test_sweep_logs_a_line_per_finished_trial_with_what_is_left(caplog):
    calls = []
    progress = _Progress(lambda done, total: calls.append((done, total)), finished=1, total=4)
    caplog.set_level(logging.INFO, logger="sqz")
    finished = SimpleNamespace(config={"trial_id": "density0.33-b6"}, trial_id="t1",
                               last_result={"size_bytes": 256908, "top1": 98.89})  # fmt: skip
    stopped = SimpleNamespace(config={"trial_id": "density0.25-b4"}, trial_id="t2", last_result={"top1": 40.0})
    progress.on_trial_complete(0, [], finished)
    progress.on_trial_complete(0, [], stopped)
    assert calls == [(2, 4), (3, 4)]
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.sweep"]
    assert lines[0].startswith("trial density0.33-b6 done: 256,908 bytes, top-1 98.89; 2 of 4 left, ETA ")
    assert lines[1].startswith("trial density0.25-b4 done: stopped early at top-1 40.00; 1 of 4 left")


def test_trial_watcher_announces_the_rows_of_the_trials_it_waits_for(tmp_path, caplog):
    """Through ray://, Tune's callbacks run on the cluster: the driver follows the
    sweep_trials rows instead, and announces only the trials of this sweep, once each."""
    from sqz.distributed.sweep import _TrialWatcher

    run_url = str(tmp_path / "run")

    def row(trial_id: str, size: int, top1: float) -> dict:
        return {"run_id": "r", "trial_id": trial_id, "size_bytes": size, "top1": top1}

    metrics.write_rows(run_url, "sweep_trials", [row("density0.5-b8", 400000, 98.0)], writer_id="density0.5-b8")  # done before
    calls = []
    caplog.set_level(logging.INFO, logger="sqz")
    with _TrialWatcher(run_url, {"density0.33-b6", "density0.25-b4"}, lambda done, total: calls.append((done, total)),
                       finished=1, total=3, interval_s=0.05):  # fmt: skip
        metrics.write_rows(run_url, "sweep_trials", [row("density0.33-b6", 256908, 98.89)], writer_id="density0.33-b6")
        metrics.write_rows(run_url, "sweep_trials", [row("density0.25-b4", 201074, 96.11)], writer_id="density0.25-b4")
    assert calls == [(2, 3), (3, 3)]
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.sweep"]
    # Both rows may land in one poll, in either order: what each line says, and the count down.
    assert sorted(line.split(";")[0] for line in lines) == ["trial density0.25-b4 done: 201,074 bytes, top-1 96.11",
                                                            "trial density0.33-b6 done: 256,908 bytes, top-1 98.89"]
    assert "; 1 of 3 left, ETA " in lines[0] and lines[1].endswith("; 0 of 3 left, ETA 0s")

"""The input pipeline as an operator meets it: the data-wait share on each epoch's
console line, and the GPU decode path (its logic on the CPU here; on CUDA with the
`gpu` marker)."""

from __future__ import annotations

import logging

from sqz import metrics
from sqz.distributed.train import EpochWatcher


def test_each_epoch_line_shows_the_share_of_time_spent_waiting_for_data(tmp_path, caplog):
    run_url = str(tmp_path / "run")
    row = {"run_id": "r", "epoch": 0, "lr": 1e-3, "loss": 1.0, "top1": 50.0, "top5": 90.0, "images_per_s": 400.0,
           "data_wait_s": 3.0, "wall_s": 25.0}  # fmt: skip
    watcher = EpochWatcher(run_url, epochs=2)
    caplog.set_level(logging.INFO, logger="sqz")
    metrics.write_rows(run_url, "train_epochs", [row], writer_id="epoch-0000")
    watcher.poll()
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.train"]
    assert len(lines) == 1 and "400 img/s, data wait 12%, 25.0 s" in lines[0], lines

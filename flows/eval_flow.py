"""evaluate_model (`sqz eval`): top-1/top-5 of a model file on a dataset split, one row
in a run's evaluations table."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.common import NOT_CACHED, RETRYING, artifact_key
from sqz.evaluation import evaluate_file


@task(name="evaluate-file", **RETRYING, **NOT_CACHED)
def evaluate_file_task(model_url: str, data_url: str, options: dict[str, Any]) -> dict[str, Any]:
    return evaluate_file(model_url, data_url, **options)


@flow(name="evaluate_model")
def evaluate_model(model_url: str, data_url: str, split: str = "val", arch: str | None = None,
                   image_size: int | None = None, normalization: str | None = None, batch_size: int = 64,
                   workers: int = 0, run_url: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``model_url`` (a .sqz file, decoded, or safetensors weights) on
    ``data_url``'s ``split``; the row goes to ``run_url``'s evaluations table (default:
    the model's run, else ./sqz-runs/evaluations) and to an artifact."""
    options = {"split": split, "arch": arch, "image_size": image_size, "normalization": normalization,
               "batch_size": batch_size, "workers": workers, "run_url": run_url}  # fmt: skip
    row = evaluate_file_task(model_url, data_url, options)
    create_table_artifact([row], key=artifact_key("eval", row["run_id"], model_url.rstrip("/").rsplit("/", 1)[-1][:40], split),
                          description=f"{model_url} on {data_url} ({split})")  # fmt: skip
    return row

"""sensitivity_analysis (`sqz sensitivity`): every layer's accuracy alone vs pruning
threshold and vs bits, in parallel on Ray, in the checkpoint's run folder."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.artifacts import publish_files
from flows.common import NOT_CACHED, artifact_key, claim_run_folder, label_flow_run
from sqz.config import DataConfig, SensitivityConfig, config_from_dict
from sqz.distributed.cluster import ray_session
from sqz.distributed.sensitivity import run_sensitivity
from sqz.runs import RunLayout
from sqz.sensitivity import layer_change_table


# Not retried: Ctrl+C must stop it; a rerun measures only what is missing.
@task(name="sensitivity-curves", **NOT_CACHED)
def sensitivity_curves(run_url: str, sensitivity_config: dict[str, Any], data_config: dict[str, Any],
                       arch: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    return run_sensitivity(RunLayout(run_url), config_from_dict(SensitivityConfig, sensitivity_config),
                           config_from_dict(DataConfig, data_config), arch)  # fmt: skip


@flow(name="sensitivity_analysis")
def sensitivity_analysis(plan: dict[str, Any], sensitivity_config: dict[str, Any], ray_address: str | None = None,
                         num_cpus: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Claim the checkpoint's run folder (``plan``, from sqz.runs.claims.plan_sweep_run),
    measure the missing curves, and return them as a per-layer table (top-1 change in
    points per threshold and per bit width), also an artifact. ``num_cpus``: CPUs of a
    local Ray started for it (empty: all of the machine's)."""
    config = config_from_dict(SensitivityConfig, sensitivity_config)  # bad input fails here, before any work
    config_from_dict(DataConfig, plan["data"])
    run_url = claim_run_folder(plan)
    label_flow_run(f"{plan['run_id']}/sensitivity", [f"model:{plan['arch']['name']}"])
    get_run_logger().info("sensitivity run %s -> %s", plan["run_id"], run_url)
    with ray_session(ray_address, num_cpus=num_cpus):
        rows = sensitivity_curves(run_url, sensitivity_config, plan["data"], plan["arch"])
    table = layer_change_table(rows, config, plan["arch"])
    create_table_artifact([dict(zip(table["headers"], row)) for row in table["rows"]],
                          key=artifact_key(plan["run_id"], "sensitivity"),
                          description=f"top-1 change (points) with only that layer pruned (t=) or quantized (b=), "
                          f"baseline {table['baseline_top1']:.2f} on {table['images']} images")  # fmt: skip
    publish_files(run_url)
    return {"run_id": plan["run_id"], "run_url": run_url, **table}

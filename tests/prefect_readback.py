"""Read a flow run, its subflow runs, their task runs and artifacts back from the Prefect
API (the ephemeral one in-process, or a server when PREFECT_API_URL points at it)."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)


def read_run_tree(flow_run_id: UUID) -> dict[str, Any]:
    """{"flow_runs": [...], "task_runs": [...], "artifacts": [...]} of the run and its subflows."""
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(flow_run_id)]
        frontier = [flow_run_id]
        while frontier:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
            )
            runs += children
            frontier = [child.id for child in children]
        ids = [run.id for run in runs]
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    return {"flow_runs": runs, "task_runs": task_runs, "artifacts": artifacts}


_LINK = re.compile(r"^\[[^\]]*\]\(([^)\s]+)\)$")


def by_kind(artifacts: list[Any]) -> dict[str, list[Any]]:
    """Artifacts by what the UI shows: link artifacts are stored as markdown "[text](url)"."""
    kinds: dict[str, list[Any]] = {}
    for artifact in artifacts:
        kind = "link" if artifact.type == "markdown" and _LINK.match(str(artifact.data)) else artifact.type
        kinds.setdefault(kind, []).append(artifact)
    return kinds


_MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(artifacts: list[Any]) -> set[str]:
    """Every URL linked from a link artifact or from a run's "files" artifact (any version)."""
    urls = {_LINK.match(a.data).group(1) for a in by_kind(artifacts).get("link", [])}
    for artifact in artifacts:
        if artifact.type == "markdown" and (artifact.key or "").endswith("-files"):
            urls |= set(_MARKDOWN_LINK.findall(str(artifact.data)))
    return urls


def keyed(artifacts: list[Any], suffix: str) -> list[Any]:
    """The artifacts whose key ends with ``suffix`` (e.g. "-report"), oldest first."""
    return sorted((a for a in artifacts if (a.key or "").endswith(suffix)), key=lambda a: a.created)

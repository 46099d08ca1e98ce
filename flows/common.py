"""What the sqz flows share: where task results live, when a task is reused or retried,
and the artifacts a run shows in the Prefect UI.

- Artifacts: flows/artifacts.py (what the operator sees); names and tags: ``label_flow_run``.
- Results: each cached task's result is a JSON record under ``<run>/prefect-results/``,
  written through ``sqz.storage`` (local folder or S3, atomic, retried), so a run folder
  carries its own cache: copying it moves the cache along, ``sqz runs rm`` clears it.
- Reuse: a task's cache key is its inputs + its source + the sqz code version, so
  re-running with the same config reuses finished stages, and changed code recomputes.
- Retries: tasks that touch storage or the cluster retry with exponential backoff and
  jitter, except when sqz raised ValueError or FileNotFoundError (bad input: trying again
  cannot help) or sweep trials failed (Tune retried each one already).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from prefect import Task, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem
from prefect.serializers import JSONSerializer
from prefect.tasks import exponential_backoff

import sqz
from sqz import storage
from sqz.runs.claims import claim_run

__all__ = [
    "RESULTS_FOLDER", "RunResultStorage", "CodeVersion", "CACHE_POLICY", "RETRYING", "CACHED", "NOT_CACHED",
    "retry_unless_bad_input", "in_run", "code_version", "artifact_key", "run_id_of", "run_tags", "label_flow_run",
    "claim_run_folder",
]  # fmt: skip

RESULTS_FOLDER = "prefect-results"


def _send_sqz_logs_to_runs() -> None:
    """sqz's own log lines (sqz.train's epochs, sqz.sweep's trials, storage retries) go
    to the flow run's log, whichever process runs the flow: the CLI, a worker, a test.
    Prefect does this for PREFECT_LOGGING_EXTRA_LOGGERS=sqz only when that is set before
    Prefect is first imported; the handler is added here at most once either way."""
    import logging

    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging.handlers import APILogHandler

    class RunLogHandler(APILogHandler):
        """Prefect's API handler, silent outside a flow or task run: sqz is also a library
        used without Prefect (a notebook, a test), where there is no run log to write to."""

        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get():
                super().emit(record)

    logger = logging.getLogger("sqz")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # INFO is what an operator reads in the run's log
    if not any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        logger.addHandler(RunLogHandler())


_send_sqz_logs_to_runs()


class RunResultStorage(WritableFileSystem):
    """Prefect result storage in a run folder, through sqz.storage (local path or S3).

    Holds only the folder URL: credentials stay in the environment, never in Prefect."""

    _block_type_name = "sqz run results"
    basepath: str

    def _url_of(self, key: str) -> str:
        return storage.join(self.basepath, key)

    # Prefect calls the sync methods with _sync=True (its block protocol).
    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        return storage.read_bytes(self._url_of(path))

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        url = self._url_of(path)
        storage.write_bytes(url, content)
        return url

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await anyio.to_thread.run_sync(self.write_path, path, content)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sqz's version and a digest of its source files (the code that computes results)."""
    root = os.path.dirname(os.path.abspath(sqz.__file__))
    digest = hashlib.sha256(sqz.__version__.encode())
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as source:
                digest.update(source.read())
    return f"{sqz.__version__}+{digest.hexdigest()[:16]}"


@dataclass
class CodeVersion(CachePolicy):
    """Cache key part: results computed by other sqz code are not reused."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str:  # fmt: skip
        return code_version()


CACHE_POLICY = INPUTS + TASK_SOURCE + CodeVersion()


def retry_unless_bad_input(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: a ValueError from sqz means bad input, and so does a
    FileNotFoundError (a missing object does not appear by waiting; the CLI reports both as
    bad input); sweep trials that failed (sqz.distributed.sweep.TrialsFailed) were each
    retried by Tune already."""
    try:
        state.result()
    except (ValueError, FileNotFoundError):
        return False
    except BaseException as exc:
        # Looked up, not imported (that would import Ray into every flow): only a process
        # that ran a sweep can have raised it.
        sweep = sys.modules.get("sqz.distributed.sweep")
        return not (sweep is not None and isinstance(exc, sweep.TrialsFailed))
    return True


# 3 retries after 5, 10, 20 s (+/- jitter): outlasts an S3 endpoint restart or a Ray
# node coming back, after the storage layer's own retries have given up.
RETRYING: dict[str, Any] = dict(
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_bad_input,
)  # fmt: skip
# Plain JSON both ways: no pickle, and no class names that a decoder would import.
CACHED: dict[str, Any] = dict(
    cache_policy=CACHE_POLICY, persist_result=True,
    result_serializer=JSONSerializer(object_encoder=None, object_decoder=None),
)  # fmt: skip
NOT_CACHED: dict[str, Any] = dict(cache_policy=NO_CACHE)


def in_run(task: Task, run_url: str) -> Task:
    """``task`` with its results stored in the run folder at ``run_url``.

    Prefect accepts only result storage saved on its server (so that other processes
    can read the results back): the block, holding nothing but the folder's URL, is
    saved under a name unique to that URL."""
    basepath = storage.join(run_url, RESULTS_FOLDER)
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    name = artifact_key("sqz-results", run_id[:40], hashlib.sha256(basepath.encode()).hexdigest()[:12])
    block = RunResultStorage(basepath=basepath)
    block.save(name, overwrite=True)
    return task.with_options(result_storage=block)


def artifact_key(*parts: str) -> str:
    """An artifact key from free text: Prefect allows lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def run_id_of(run_url: str) -> str:
    return run_url.rstrip("/").rsplit("/", 1)[-1]


def run_tags(*, model: str | None = None, data_url: str | None = None, bits: Any = None,
             prune_mode: str | None = None) -> list[str]:  # fmt: skip
    """Tags the UI's filters find runs by: ``model:…``, ``dataset:…``, ``bits:…``, ``prune:…``."""
    tags = []
    if model:
        tags.append(f"model:{model}")
    if data_url:
        tags.append(f"dataset:{data_url.rstrip('/').rsplit('/', 1)[-1] or data_url}")
    for b in ([bits] if isinstance(bits, int) else bits or []):
        tags.append(f"bits:{int(b)}")
    if prune_mode:
        tags.append(f"prune:{prune_mode}")
    return tags


def label_flow_run(name: str, tags: list[str] = ()) -> None:
    """Name the current flow run (``<sqz run id>/<stage>``) and add ``tags`` to it.

    The run id is known only once the flow has read its parameters (the pipeline derives
    it from the config), so the flow renames itself rather than passing a name template."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    merged = sorted(set(context.flow_run.tags or []) | set(tags))
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, name=name, tags=merged)


@task(name="claim-run", **RETRYING, **NOT_CACHED)
def claim_run_folder(plan: dict[str, Any]) -> str:
    """A command's first task: its run folder's manifest (and swept baseline) written."""
    return claim_run(plan)

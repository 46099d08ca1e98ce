"""What the sqz flows share: where task results live, when a task is reused or retried,
and the artifacts a run shows in the Prefect UI.

- Results: each cached task's result is a JSON record under ``<run>/prefect-results/``,
  written through ``sqz.storage`` (local folder or S3, atomic, retried), so a run folder
  carries its own cache: copying it moves the cache along, ``sqz runs rm`` clears it.
- Reuse: a task's cache key is its inputs + its source + the sqz code version, so
  re-running with the same config reuses finished stages, and changed code recomputes.
- Retries: tasks that touch storage or the cluster retry with exponential backoff and
  jitter, except when sqz raised ValueError (bad input: trying again cannot help).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import anyio.to_thread
from prefect import Task, task
from prefect.artifacts import create_image_artifact, create_link_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem
from prefect.serializers import JSONSerializer
from prefect.tasks import exponential_backoff

import sqz
from sqz import storage
from sqz.runs import catalog
from sqz.runs.claims import claim_run

__all__ = [
    "RESULTS_FOLDER", "RunResultStorage", "CodeVersion", "CACHE_POLICY", "RETRYING", "CACHED", "NOT_CACHED",
    "retry_unless_bad_input", "in_run", "code_version", "artifact_key", "publish_outputs", "claim_run_folder",
]  # fmt: skip

RESULTS_FOLDER = "prefect-results"


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
    """Prefect's retry_condition_fn: a ValueError from sqz means bad input."""
    try:
        state.result()
    except ValueError:
        return False
    except BaseException:
        return True
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


def _href(url: str) -> str:
    return f"file://{url}" if storage.is_local(url) else url


def publish_outputs(run_url: str, *, include: Callable[[str, str], bool] = lambda kind, url: True) -> list[str]:
    """A link artifact for each output file of the run (.sqz and baseline models,
    Parquet files, report, plot) and the Pareto plot as an image; returns the URLs."""
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    linked = []
    for kind, url in catalog.run_outputs(run_url):
        if not include(kind, url):
            continue
        name = url[len(run_url):].lstrip("/")
        create_link_artifact(link=_href(url), link_text=name, key=artifact_key(run_id, name),
                             description=f"{kind} of sqz run {run_id}")  # fmt: skip
        linked.append(url)
        if name.endswith("pareto.png"):
            # Browsers cannot open s3:// or a worker's file:// URL: embed the image itself.
            image = base64.b64encode(storage.read_bytes(url)).decode()
            create_image_artifact(image_url=f"data:image/png;base64,{image}", key=artifact_key(run_id, "pareto-plot"),
                                  description=f"Pareto frontier (size vs top-1) of sqz run {run_id}")  # fmt: skip
    return linked


@task(name="claim-run", **RETRYING, **NOT_CACHED)
def claim_run_folder(plan: dict[str, Any]) -> str:
    """A command's first task: its run folder's manifest (and swept baseline) written."""
    return claim_run(plan)

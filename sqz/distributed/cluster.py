"""Connect to Ray, or start a local Ray for the duration of a run."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Iterator

import ray

from sqz import storage

__all__ = ["ray_session", "alive_nodes", "require_shared_storage", "quiet_exit_in_finalizers"]

# Ray puts unix sockets under its temp dir and those paths must stay under 107 bytes:
# ".../session_<date>_<time>_<pid>/sockets/plasma_store" adds about 70 to the base.
_MAX_TEMP_BASE = 36


def _local_temp_dir(workdir: str) -> tuple[str, bool]:
    """A temp dir inside ``workdir`` when its path is short enough, else a short one in
    /tmp that we remove afterwards. Returns (path, remove_after)."""
    preferred = os.path.abspath(os.path.join(workdir, ".ray"))
    if len(preferred) <= _MAX_TEMP_BASE:
        os.makedirs(preferred, exist_ok=True)
        return preferred, False
    return tempfile.mkdtemp(prefix="sqz-ray-", dir="/tmp"), True


@contextlib.contextmanager
def ray_session(address: str | None = None, *, workdir: str = ".", num_cpus: int | None = None) -> Iterator[None]:
    """Use an already initialised Ray (tests share one), connect to ``address``
    (``ray://host:10001`` or ``auto``), or start a local Ray and stop it on exit."""
    if ray.is_initialized():
        yield
        return
    if address:
        # Every task and actor of this job (Train workers, Tune trials, Ray Data reads) on
        # every node gets this process's S3 endpoint and region, e.g. from --s3-endpoint:
        # nodes started elsewhere do not have them. Credentials are never sent; each node
        # brings its own.
        settings = storage.s3_settings_env()
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": settings} if settings else None)
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir, remove_after = _local_temp_dir(workdir)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
        if remove_after:
            shutil.rmtree(temp_dir, ignore_errors=True)


def alive_nodes() -> int:
    """How many Ray nodes are alive in the connected cluster."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def require_shared_storage(url: str, *, shared_mount: bool = False, option: str = "--storage") -> None:
    """Refuse a local storage path on a cluster of more than one node: each node would
    write its checkpoints, trials and metrics to its own disk, and no node would see the
    others'. ``shared_mount`` declares the path a mount every node shares (NFS, ...)."""
    if shared_mount or not storage.is_local(url):
        return
    nodes = alive_nodes()
    if nodes > 1:
        raise ValueError(f"{option} {url}: a local path on a {nodes}-node Ray cluster, but nodes do not share a local "
                         f"disk; use S3-compatible storage (s3://bucket/prefix), or --shared-mount if the path is a "
                         f"mount every node shares")  # fmt: skip


def quiet_exit_in_finalizers() -> None:
    """Called first in each sqz function a Ray worker runs (a Train worker's loop, a Tune
    trial, a sensitivity task). Ray ends a worker whose actor or job is done with SIGTERM,
    and its handler raises SystemExit. When the signal lands while Python runs a
    finalizer (a weakref callback, a ``__del__``), Python cannot raise it there and prints
    "Exception ignored in: ... SystemExit: 1" with a traceback, which Ray forwards to the
    driver's console: a traceback in the middle of a healthy run (seen in `make demo`).
    Ray still ends the process. Every other exception a finalizer raises still goes to
    the previous ``sys.unraisablehook``. Not a runtime_env ``worker_process_setup_hook``:
    that would import sqz into every worker Ray starts, idle ones included."""
    if getattr(sys.unraisablehook, "_sqz_quiet_exit", False):
        return  # a reused worker: installed already
    previous = sys.unraisablehook

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook._sqz_quiet_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook

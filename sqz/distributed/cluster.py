"""Connect to Ray, or start a local Ray for the duration of a run.

Access rules (ShadowRay, CVE-2023-48022: whoever reaches an unauthenticated Ray runs code
on it):
- The embedded Ray that a run starts listens on 127.0.0.1 only, however sqz was started
  (make, the bare console script, or a notebook), so nothing off this machine reaches it.
- A cluster (``--ray-address``) is reached with Ray's token authentication: the token in
  ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``,
  with ``RAY_AUTH_MODE=token``. Before ``ray.init``, one gRPC call checks that the cluster
  accepts this client (sqz.cluster_access; the CLI makes the same check before Prefect
  starts), so a missing or wrong token is one line naming RAY_AUTH_TOKEN within a
  second, not 20-30 s of Ray retrying and pages of its warnings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Iterator

import ray
from ray._private import ray_constants
from ray.exceptions import AuthenticationError

from sqz import storage
from sqz.cluster_access import RayAccessError, check_ray_access

__all__ = ["ray_session", "RayAccessError", "check_ray_access", "is_embedded", "alive_nodes", "require_shared_storage",
           "quiet_exit_in_finalizers"]  # fmt: skip

# Ray's knob for "a single machine only": with it off, every process of a local Ray binds
# 127.0.0.1; on (Linux's default), they bind all interfaces and advertise the machine's
# external address.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Set while this process runs the embedded local Ray (ray_session without an address).
_embedded = False


def is_embedded() -> bool:
    """Whether the connected Ray is the loopback-only one this process started."""
    return _embedded

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
def _loopback_only() -> Iterator[None]:
    """A local Ray started inside this block binds 127.0.0.1 only. Ray reads the switch
    from the environment when it is imported (this module imports it first), and its
    processes read it when they start: both are set for the start, then restored, so a
    later connection to a real cluster from this process is unaffected."""
    previous_env, previous_flag = os.environ.get(_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_SWITCH] = "0"
    if sys.platform.startswith("linux"):
        # gloo (torch.distributed between Train workers) otherwise listens on the address
        # the host name resolves to; Ray's processes, started below, keep this for good.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = previous_env


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
        check_ray_access(address)
        try:
            ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": settings} if settings else None)
        except (AuthenticationError, ConnectionError) as exc:  # "auto", or a cluster that changed since the probe
            raise RayAccessError(f"--ray-address {address}: could not connect ({type(exc).__name__}); with token "
                                 "authentication, RAY_AUTH_TOKEN must hold the cluster's token and RAY_AUTH_MODE=token") from None  # fmt: skip
        try:
            yield
        finally:
            ray.shutdown()
        return
    global _embedded
    temp_dir, remove_after = _local_temp_dir(workdir)
    with _loopback_only():
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
    _embedded = True
    try:
        yield
    finally:
        _embedded = False
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

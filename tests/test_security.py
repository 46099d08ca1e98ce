"""Who can reach what sqz starts.

- The embedded default (a local Ray and Prefect's temporary API, started by a bare `sqz`
  command or by sqz's Python API) listens on loopback only: every listening socket of
  every process it starts is inside 127.0.0.0/8 (or ::1). The bare `sqz run` is watched
  in test_storage_metrics' S3 run (one full run fewer in the suite); sqz's Python API here.
- The session's Prefect server (tests/conftest.py) runs with basic-auth: anonymous and
  wrong requests get 401; its health probe stays open, as Kubernetes probes need.

The Ray cluster's token authentication is in test_ray_cluster (it needs the two nodes).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

from processes import ListeningSockets, is_loopback

SQZ = os.path.join(os.path.dirname(sys.executable), "sqz")


def _bare_environment(home: str) -> dict[str, str]:
    """What a new user's shell has: none of the settings the Makefile and the tests' conftest
    export for Ray and Prefect (no single-machine switch, no auth mode, no API URL), a home
    of its own (Ray writes its default token there)."""
    dropped = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
               "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "HOME": home, "PREFECT_HOME": os.path.join(home, "prefect")}


@pytest.mark.slow
def test_ray_session_from_python_listens_on_loopback_only(tmp_path):
    """sqz's Python API starts its local Ray the way a notebook would, in a bare
    environment: no socket outside loopback. (The bare `sqz run`, with Prefect's temporary
    API and Ray Train's workers, is checked the same way in test_storage_metrics' S3 run.)"""
    home = str(tmp_path)
    workdir = tempfile.mkdtemp(prefix="s", dir="/tmp")  # short: Ray's temp dir goes inside
    notebook = ("import time; from sqz.distributed.cluster import ray_session\n"
                "with ray_session(workdir='.', num_cpus=1):\n    import ray; ray.get(ray.remote(lambda: 1).remote()); time.sleep(3)\n")  # fmt: skip
    python_api = subprocess.Popen([sys.executable, "-c", notebook], cwd=workdir, env=_bare_environment(home),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    listening = ListeningSockets(python_api)
    try:
        python_api.wait(timeout=300)
    finally:
        if python_api.poll() is None:
            python_api.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    listeners = listening.stop()
    assert python_api.returncode == 0, python_api.stderr.read().decode(errors="replace")[-3000:]
    print(f"ray_session(): {len(listeners)} listening sockets, on {sorted({host for host, _ in listeners})}")
    outside = {address: who for address, who in listeners.items() if not is_loopback(address[0])}
    assert not outside, f"ray_session() listens outside loopback: {outside}"
    # Not vacuous: the GCS and the raylet were seen.
    assert any("gcs_server" in who for who in listeners.values()), listeners
    assert any("raylet" in who for who in listeners.values()), listeners


def _api_status(url: str, auth: str | None, method: str = "POST") -> int:
    request = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_prefect_server_refuses_anonymous_requests(prefect_api):
    auth = os.environ["PREFECT_API_AUTH_STRING"]
    flows = f"{prefect_api}/flows/filter"
    assert _api_status(flows, auth) == 200
    assert _api_status(flows, None) == 401
    assert _api_status(flows, "admin:" + "wrong") == 401
    assert _api_status(f"{prefect_api}/deployments/filter", None) == 401
    assert _api_status(f"{prefect_api}/health", None, method="GET") == 200  # liveness probes need no credentials


@pytest.mark.slow
@pytest.mark.parametrize("auth", [None, "admin:wrong"], ids=["no-string", "wrong-string"])
def test_sqz_refuses_a_prefect_server_it_has_no_credentials_for_in_one_line(prefect_api, auth, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_AUTH_STRING"}
    if auth is not None:
        env["PREFECT_API_AUTH_STRING"] = auth
    result = subprocess.run([SQZ, "train", "--epochs", "1", "--storage", str(tmp_path / "runs")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines() if line.startswith("sqz train: error:")]
    assert "PREFECT_API_AUTH_STRING" in result.stderr and "401" in result.stderr and "Traceback" not in result.stderr
    assert os.environ["PREFECT_API_AUTH_STRING"] not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()

"""Who can reach what sqz starts.

- The embedded default (a local Ray and Prefect's temporary API, started by a bare `sqz`
  command or by sqz's Python API) listens on loopback only: every listening socket of
  every process it starts is inside 127.0.0.0/8 (or ::1).
- The session's Prefect server (tests/conftest.py) runs with basic-auth: anonymous and
  wrong requests get 401; its health probe stays open, as Kubernetes probes need.

The Ray cluster's token authentication is in test_ray_cluster (it needs the two nodes).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import psutil
import pytest

SQZ = os.path.join(os.path.dirname(sys.executable), "sqz")


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _bare_environment(home: str) -> dict[str, str]:
    """What a new user's shell has: none of the settings the Makefile and the tests' conftest
    export for Ray and Prefect (no single-machine switch, no auth mode, no API URL), a home
    of its own (Ray writes its default token there)."""
    dropped = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
               "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "HOME": home, "PREFECT_HOME": os.path.join(home, "prefect")}


def _listeners_until_exit(process: subprocess.Popen, timeout_s: float) -> dict[tuple[str, int], str]:
    """Every listening TCP/UDP socket held, at any poll, by ``process`` or a descendant of
    it (Ray's GCS, raylet, agents and workers; Prefect's server), until it exits."""
    root = psutil.Process(process.pid)
    seen: dict[tuple[str, int], str] = {}
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        assert time.monotonic() < deadline, f"still running after {timeout_s:.0f} s"
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in family:
            try:
                for conn in member.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):  # TCP listen, bound UDP
                        seen[(conn.laddr.ip, conn.laddr.port)] = f"{member.name()}: {' '.join(member.cmdline())[:300]}"
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        time.sleep(0.3)
    return seen


@pytest.mark.slow
@pytest.mark.integration
def test_the_embedded_default_listens_on_loopback_only(tmp_path):
    """The bare console script (outside make) runs the whole pipeline on its own local Ray
    and Prefect's temporary API; then sqz's Python API starts its local Ray the way a
    notebook would. Neither opens a socket outside loopback."""
    home = tempfile.mkdtemp(prefix="sqz-home-")
    env = _bare_environment(home)
    workdir = tempfile.mkdtemp(prefix="s", dir="/tmp")  # short: Ray's temp dir goes inside
    args = ["run", "--epochs", "1", "--thresholds", "0.33", "--bits", "6", "--workers", "2", "--retrain-steps", "2",
            "--prune-frequency", "1", "--finetune-epochs", "0", "--distill-steps", "0", "--run-id", "loopback"]  # fmt: skip
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen([SQZ, *args], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            pipeline = _listeners_until_exit(run, 900)
        finally:
            if run.poll() is None:
                run.kill()
    out = (tmp_path / "run.log").read_text(errors="replace")
    assert run.returncode == 0, out[-3000:]

    notebook = ("import time; from sqz.distributed.cluster import ray_session\n"
                "with ray_session(workdir='.', num_cpus=1):\n    import ray; ray.get(ray.remote(lambda: 1).remote()); time.sleep(3)\n")  # fmt: skip
    python_api = subprocess.Popen([sys.executable, "-c", notebook], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)  # fmt: skip
    library = _listeners_until_exit(python_api, 300)
    assert python_api.returncode == 0, python_api.stderr.read().decode(errors="replace")[-3000:]

    for name, listeners in (("sqz run", pipeline), ("ray_session()", library)):
        print(f"{name}: {len(listeners)} listening sockets, on {sorted({host for host, _ in listeners})}")
        outside = {address: who for address, who in listeners.items() if not _is_loopback(address[0])}
        assert not outside, f"{name} listens outside loopback: {outside}"
        # Not vacuous: the GCS, the raylet and (for the pipeline) Prefect's server were seen.
        assert any("gcs_server" in who for who in listeners.values()), listeners
        assert any("raylet" in who for who in listeners.values()), listeners
    assert any("uvicorn" in who for who in pipeline.values()), pipeline  # Prefect's temporary API server


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

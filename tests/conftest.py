"""Shared fixtures: one Prefect server, one local Ray and one moto S3 server per session,
GPU skipping.

Environment first: Ray and Prefect read these when imported, so they are set before any
test module imports them (this file is loaded before the tests are collected).

One Prefect server for the whole session: every flow, in this process or in an `sqz`
subprocess, talks to it through PREFECT_API_URL instead of starting Prefect's ephemeral
API (~13 s per process on 2 cores). It starts here, in the background, so that it boots
while the tests are collected; the autouse ``prefect_api`` fixture waits until it answers.

`make test` runs the suite on two pytest-xdist workers (tests/scheduling.py says which
tests go where). The Prefect server and the trained baseline are shared by the whole run;
each worker has its own Ray, moto server and session folder.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import scheduling
from processes import stop_process_group

# Short base: Ray's unix socket paths under it must stay below 107 bytes. Under
# pytest-xdist each worker process has its own (its own Ray and moto); the Prefect server
# and the shared baseline live in the first process's, named by SQZ_TEST_SHARED_DIR.
SESSION_DIR = tempfile.mkdtemp(prefix="sqzt-", dir="/tmp")
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("SQZ_TEST_SHARED_DIR"):
    SHARED_DIR = os.environ["SQZ_TEST_SHARED_DIR"]
else:
    SHARED_DIR = os.environ["SQZ_TEST_SHARED_DIR"] = SESSION_DIR
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # local Ray binds 127.0.0.1
# Token authentication everywhere, as on a real cluster: the session's local Ray, the
# two-node cluster and every `sqz` subprocess share one token made for this session; the
# session's Prefect server asks for a basic-auth string, which every client sends. Made
# by the first process; xdist workers inherit both (a developer's own values never reach
# the tests).
if SHARED_DIR == SESSION_DIR:
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["PREFECT_API_AUTH_STRING"] = f"sqz-tests:{secrets.token_hex(16)}"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# As in the Makefile: no preemption-watcher actor per training run (no spot nodes here).
os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
# As in the Makefile: the Train controller polls its workers every 0.5 s, not 2 s (each
# training run ends ~4 s sooner).
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
os.environ["PREFECT_HOME"] = os.path.join(SHARED_DIR, "prefect")
# sqz's cache of what it derives from scikit-learn (the digits, their splits), shared by
# every process of the session and not the developer's ~/.cache/sqz.
os.environ["SQZ_CACHE_DIR"] = os.path.join(SHARED_DIR, "cache")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
# OpenMP threads that sleep when idle instead of spinning. torch's 2 intra-op threads spin
# between parallel regions; with the session's Prefect server, Ray and moto sharing the
# 2 cores, a spinning thread that lost its core stalls every region: 4 digits epochs took
# 82 s instead of 7 s beside one busy process (5 s quiet either way). Read by libgomp when
# torch loads, and inherited by every subprocess and Ray worker.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# moto's dummy credentials, set before any Ray starts so that Ray's worker processes
# (Ray Data read tasks on s3://) inherit them; a developer's real keys never reach tests.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.pop("AWS_SESSION_TOKEN", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_prefect_server() -> tuple[subprocess.Popen, str, str]:
    """`prefect server start` on a free 127.0.0.1 port, its own home (database, log) in the
    session folder, in its own process group (stopped by its pid at session end)."""
    home = os.path.join(SESSION_DIR, "prefect-server")
    os.makedirs(home)
    port = free_port()
    # The UI is served too (the browser test opens it); it must call this server's API,
    # not the default port 4200's.
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"]}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    with open(os.path.join(home, "server.log"), "wb") as log:
        process = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "prefect"), "server", "start",
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return process, f"http://127.0.0.1:{port}/api", home


if SHARED_DIR == SESSION_DIR:  # not an xdist worker
    PREFECT_SERVER, PREFECT_API, PREFECT_SERVER_HOME = _start_prefect_server()
    os.environ["PREFECT_API_URL"] = PREFECT_API  # read by Prefect at import, and inherited by subprocesses
else:  # an xdist worker: the first process's server (its environment came with the worker)
    PREFECT_SERVER, PREFECT_API = None, os.environ["PREFECT_API_URL"]
    PREFECT_SERVER_HOME = os.path.join(SHARED_DIR, "prefect-server")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED_MODEL = os.path.join(REPO_ROOT, "..", "shared", "models", "squeezenet-deep-compression", "compressed_SqueezeNet.net")


def pytest_collection_modifyitems(config, items):
    import torch

    scheduling.longest_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _stop_prefect_server_and_clean_up() -> None:
    """The server's process group ended (SIGTERM, then SIGKILL); then the session folder goes.
    An xdist worker removes only its own folder; the first process, which ends last, stops
    the server."""
    if PREFECT_SERVER is not None:
        stop_process_group(PREFECT_SERVER)
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


# At interpreter exit, not at session finish: Prefect sends its last logs and events to the
# API from threads it drains just before the atexit hooks run, and this hook, registered
# before Prefect is imported, runs after Prefect's own.
atexit.register(_stop_prefect_server_and_clean_up)


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """The session's Prefect server (PREFECT_API_URL), once it answers on /api/health.

    Autouse: every command may run a flow, in-process or in a subprocess."""
    deadline = time.monotonic() + 180
    while True:
        try:
            if urllib.request.urlopen(f"{PREFECT_API}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or (PREFECT_SERVER is not None and PREFECT_SERVER.poll() is not None):
            log = open(os.path.join(PREFECT_SERVER_HOME, "server.log"), errors="replace").read()[-2000:]
            raise RuntimeError(f"prefect server did not answer within 180 s: {log}")
        time.sleep(0.25)
    yield PREFECT_API


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every test that needs one: start-up costs ~10 s."""
    from sqz.distributed.cluster import ray_session

    with ray_session(workdir=SESSION_DIR, num_cpus=2):
        yield


@pytest.fixture(scope="session")
def ray_address(ray_local):
    """The shared local Ray's address, for `sqz ... --ray-address` in a subprocess: the
    command connects to it (~1 s) instead of starting its own Ray (~6-10 s)."""
    import ray

    return ray.get_runtime_context().gcs_address


def free_port_outside(low: int, high: int) -> int:
    """A free 127.0.0.1 port not in [low, high] (e.g. Ray's worker ports)."""
    for _ in range(100):
        port = free_port()
        if not low <= port <= high:
            return port
    raise RuntimeError(f"no free port outside {low}-{high} in 100 tries")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster (1 CPU each) on this machine, for the `cluster` tests,
    started on first use (~15 s) and ended, node by node, at session end. Its client
    port stays outside Ray's worker ports (10002-19999)."""
    from ray_cluster import TwoNodeRayCluster

    cluster = TwoNodeRayCluster(os.path.join(SESSION_DIR, "rc"), free_port_outside(10002, 19999),
                                free_port_outside(10002, 19999), dashboard_port=free_port_outside(10002, 19999))  # fmt: skip
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free 127.0.0.1 port, stopped (by its pid) at session end."""
    port = free_port()
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("moto_server did not start within 30 s")
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the moto server; returns its s3:// URL."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    name = f"sqz-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def digits_data():
    from sqz.config import DataConfig

    return DataConfig(url="digits")


@pytest.fixture(scope="session")
def trained_baseline():
    """One digits baseline for every test that needs a trained model: squeezenet_small
    trained in-process with the digits recipe (warm-up, lr 5e-4, batch 16, shifts, label
    smoothing) cut to 4 epochs: well above chance, so a badly pruned trial is
    distinguishable from a good one. Returns its safetensors file (read-only by agreement).

    One training for all xdist workers: the first to take the lock trains, the others wait
    and read its file."""
    from filelock import FileLock

    path = pathlib.Path(SHARED_DIR, "trained-baseline", "baseline.safetensors")
    path.parent.mkdir(exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            _train_baseline(str(path))
    return path


def _train_baseline(path: str) -> None:
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from sqz import engine
    from sqz.config import TRAIN_RECIPES, DataConfig, TrainConfig
    from sqz.data import load_split
    from sqz.models import build_model

    recipe = TRAIN_RECIPES["digits"]
    train_cfg = TrainConfig(**{**recipe["train"], "epochs": 4})
    data_cfg = DataConfig(**recipe["data"])
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    loader = DataLoader(load_split(data_cfg, "train"), batch_size=data_cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    engine.fit(model, loader, train_cfg)
    top1 = engine.evaluate(model, DataLoader(load_split(DataConfig(url="digits"), "val"), batch_size=256)).top1
    assert top1 > 80, f"the shared baseline trained to only {top1:.1f}% top-1"
    save_file(model.state_dict(), path + ".partial")
    os.replace(path + ".partial", path)  # whole or absent, for the worker waiting on the lock


@pytest.fixture
def refused_in_process(monkeypatch, capfd):
    """Runs ``sqz <argv>`` in this process and returns (exit code, what reached stderr),
    failing the test if the command reached its flow (Prefect, Ray, any work). capfd reads
    file descriptor 2, so whatever any library writes there counts too. In-process because
    a fresh interpreter per case cost ~2.5-3 s of imports each; test_cli and test_train
    keep a real `sqz` process per error path."""
    import sqz.cli  # noqa: F401  (every command module, so that each one's run_flow is patched)
    from sqz.cli import main

    def reached(*args, **kwargs):
        raise AssertionError(f"the command reached its flow: {args!r}")

    for name, module in list(sys.modules.items()):
        if name.startswith("sqz.cli") and hasattr(module, "run_flow"):
            monkeypatch.setattr(module, "run_flow", reached)

    def run(argv: list[str]) -> tuple[int, str]:
        capfd.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own refusals
            code = exit_info.code
        return code, capfd.readouterr().err

    return run


@pytest.hookimpl(optionalhook=True)  # so that `pytest -p no:xdist` still collects
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on two pytest-xdist workers: tests/scheduling.py says how."""
    return scheduling.make_scheduler(config, log)

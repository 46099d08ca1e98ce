"""Sweeps at scale: how the cost of `sqz sweep` grows with the number of trials.

For each N (``--trials 64,256,1024``) one `sqz sweep` of N real trials (sqz's trial code:
prune, retrain, k-means, encode, evaluate the decoded file) with a tiny retrain budget
(N/2 densities x {8, 6} bits, ``--retrain-steps 2 --prune-frequency 1 --prune-schedule
oneshot``) on a digits baseline, as a new user would run it, but on the parts of a real
deployment, all started here on 127.0.0.1:

- a Ray cluster of two nodes (1 CPU each: 2 trials at a time), token auth on;
- S3: moto's server behind a counting HTTP front (every request, by method);
- a Prefect server (basic auth): the flow, its tasks and artifacts are read back from it.

Prints per N: wall time, the sum of the trials' own time and the overhead over the ideal
(sum / slots); each stage's time (plan, sweep, compact, report, artifacts); a trial's
fixed cost by phase (from each row's ``phase_s``) and the gap between trials on a slot
(Tune scheduling, result reporting, the row's write); S3 requests and objects per trial;
Parquet files per table; report and artifact sizes; DuckDB / pandas over the compacted
table; a fit of each cost against N. ``--resume N`` kills an N-trial sweep half-way and
times its rerun to the first new trial. Records bench/results/scale.json.

Figures, not asserts. Other work on the machine moves them: the load average is printed.

    .venv/bin/python bench/bench_scale.py --trials 64,256 --resume 256
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]  # results.py; the test helpers that start S3 and Ray

BIN = Path(sys.executable).parent
ARCH = "squeezenet_small"
SLOTS = 2  # two Ray nodes of one CPU, one CPU per trial


def _free_port(outside: tuple[int, int] = (10002, 19999)) -> int:
    """A free 127.0.0.1 port outside Ray's worker port range."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not outside[0] <= port <= outside[1]:
            return port


def _wait_http(url: str, what: str, timeout_s: float = 180, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer on {url} within {timeout_s:.0f} s") from None
            time.sleep(0.3)


def _load() -> float:
    return os.getloadavg()[0]


# ------------------------------------------------------------------ the deployment


class Deployment:
    """moto S3 (+ a counting front), a Prefect server and a two-node Ray cluster, each
    started here and stopped by its own process id."""

    def __init__(self, workdir: Path, nodes: int) -> None:
        self.workdir, self.nodes = workdir, nodes
        self.processes: list[subprocess.Popen] = []
        self.cluster = None

    def start(self) -> None:
        os.environ.update({
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "PREFECT_API_AUTH_STRING": f"bench:{secrets.token_hex(16)}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(self.workdir / "prefect-client"), "OMP_WAIT_POLICY": "PASSIVE",
            "SQZ_CACHE_DIR": os.environ.get("SQZ_CACHE_DIR", str(ROOT / ".work" / "cache")),
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        })  # fmt: skip
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        # S3: moto, and in front of it the test suite's forwarding front, counting requests.
        moto_port = _free_port()
        self.processes.append(subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
        _wait_http(f"http://127.0.0.1:{moto_port}", "moto_server", 30)
        from s3_front import S3Front

        self.front = S3Front(_free_port(), f"http://127.0.0.1:{moto_port}").start()
        self.by_method: collections.Counter = collections.Counter()
        handler = self.front._server.RequestHandlerClass
        forward = handler.do_GET

        def counted(request):  # every request once, by method (LIST is a GET on the bucket)
            kind = request.command
            if kind == "GET" and ("list-type=" in request.path or request.path.rstrip("/").count("/") <= 1):
                kind = "LIST"
            self.by_method[kind] += 1
            forward(request)

        handler.do_GET = handler.do_PUT = handler.do_POST = handler.do_HEAD = handler.do_DELETE = counted
        os.environ["AWS_ENDPOINT_URL_S3"] = self.front.url
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1")
        self.s3.create_bucket(Bucket="bench")
        # Prefect: a real server, with an auth string every client sends.
        port = _free_port()
        home = self.workdir / "prefect-server"
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_AUTH_STRING": os.environ["PREFECT_API_AUTH_STRING"],
               "PREFECT_UI_ENABLED": "false"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        with open(home / "server.log", "wb") as log:
            self.processes.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 240
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("prefect server did not answer within 240 s") from None
                time.sleep(0.5)
        # Ray: two nodes of one CPU each (the test suite's cluster helper).
        from ray_cluster import TwoNodeRayCluster

        if self.nodes == 1:
            self.cluster = _OneNodeRayCluster(str(self.workdir / "ray"), _free_port(), _free_port(), dashboard_port=_free_port())
            self.cluster.start()
            return
        for attempt in range(1, 4):
            # A raylet has 30 s (fixed in Ray) to register; on a loaded machine a node can miss it.
            self.cluster = TwoNodeRayCluster(str(self.workdir / f"ray{attempt}"), _free_port(), _free_port(),
                                             dashboard_port=_free_port())  # fmt: skip
            try:
                self.cluster.start()
                break
            except RuntimeError as exc:
                self.cluster = None
                if attempt == 3:
                    raise
                print(f"Ray cluster start {attempt} failed ({str(exc).splitlines()[0][:120]}); again", flush=True)

    def stop(self) -> None:
        from processes import stop_process_group

        if self.cluster is not None:
            self.cluster.stop()
        if getattr(self, "front", None) is not None:
            self.front.stop()
        for process in reversed(self.processes):
            stop_process_group(process, grace_s=10)

    def requests(self) -> dict[str, int]:
        return dict(self.by_method)

    def objects(self, prefix: str) -> list[dict]:
        found = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
            found += page.get("Contents", [])
        return found


def _one_node_cluster_class():
    import ray_cluster

    class OneNode(ray_cluster.TwoNodeRayCluster):
        """The head alone with both CPUs (``--nodes 1``): for a machine too loaded for a
        second raylet to register within Ray's fixed 30 s."""

        def _start_node(self, name: str, args: list[str]) -> subprocess.Popen:
            temp_dir = os.path.join(self.base_dir, name)
            os.makedirs(temp_dir, exist_ok=True)
            command = [ray_cluster.RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(SLOTS),
                       "--temp-dir", temp_dir, "--disable-usage-stats", "--block"]  # fmt: skip
            with open(os.path.join(self.base_dir, f"{name}.log"), "wb") as log:
                return subprocess.Popen(command, env={**os.environ, **ray_cluster.NODE_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip

        def start(self, timeout_s: float = 180) -> None:
            try:
                self.head = self._start_node("head", ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                                                      "--ray-client-server-port", str(self.client_port)])  # fmt: skip
                self.wait_for_nodes(1, timeout_s)
            except BaseException:
                self.stop()
                raise

    return OneNode


class _OneNodeRayCluster:
    def __new__(cls, *args, **kwargs):
        return _one_node_cluster_class()(*args, **kwargs)


# ------------------------------------------------------------------ one sweep


def _baseline(path: Path) -> Path:
    """A digits squeezenet_small trained 4 epochs with the demo's recipe, as the test suite's
    shared baseline is (cached)."""
    if path.exists():
        return path
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from sqz import engine
    from sqz.config import TRAIN_RECIPES, DataConfig, TrainConfig
    from sqz.data import load_split
    from sqz.models import build_model

    recipe = TRAIN_RECIPES["digits"]
    train_cfg, data_cfg = TrainConfig(**{**recipe["train"], "epochs": 4}), DataConfig(**recipe["data"])
    torch.manual_seed(0)
    model = build_model(ARCH, num_classes=10)
    loader = DataLoader(load_split(data_cfg, "train"), batch_size=data_cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    engine.fit(model, loader, train_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path) + ".partial")
    os.replace(str(path) + ".partial", path)
    return path


def _densities(trials: int) -> list[str]:
    """trials / 2 densities evenly between 0.10 and 0.95, each a distinct grid point."""
    count = trials // 2
    return [f"{0.10 + 0.85 * i / max(1, count - 1):.6f}" for i in range(count)]


def _sweep_command(deploy: Deployment, trials: int, run_id: str, distill_steps: int) -> list[str]:
    return [str(BIN / "sqz"), "sweep", "--checkpoint", "s3://bench/baseline.safetensors", "--model", ARCH, "--data", "digits",
            "--storage", "s3://bench/runs", "--run-id", run_id, "--s3-endpoint", deploy.front.url,
            "--ray-address", deploy.cluster.address, "--prune-mode", "density", "--thresholds", ",".join(_densities(trials)),
            "--bits", "8,6", "--retrain-steps", "2", "--prune-frequency", "1", "--prune-schedule", "oneshot",
            "--distill-steps", str(distill_steps), "--max-concurrent", str(SLOTS)]  # fmt: skip


def _flow_stages(run_id: str) -> dict:
    """The sweep_checkpoint flow run named <run_id>/sweep, its task runs' (start, end) and
    its artifacts' sizes, as the Prefect server recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{run_id}/sweep"])))
        run = max(runs, key=lambda r: r.start_time or r.created)
        tasks = {}
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]})):
            if task_run.start_time and task_run.end_time:
                tasks[task_run.name.rsplit("-", 1)[0]] = (task_run.start_time.timestamp(), task_run.end_time.timestamp())
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    sizes = collections.defaultdict(int)
    versions = collections.Counter()
    for artifact in artifacts:
        kind = (artifact.key or artifact.type or "").rsplit("-", 1)[-1]
        data = artifact.data if isinstance(artifact.data, str) else json.dumps(artifact.data)
        sizes[kind] = max(sizes[kind], len(data.encode()))
        versions[kind] += 1
    return {"start": run.start_time.timestamp(), "end": run.end_time.timestamp(), "tasks": tasks,
            "artifact_bytes": dict(sizes), "artifact_versions": dict(versions)}  # fmt: skip


def _trial_costs(rows: list[dict]) -> dict:
    """Mean seconds per phase of a trial (from phase_s), and the mean gap between one trial's
    end and the next trial's start on the same node (Tune's scheduling and result handling,
    the row's write, the next trial's start-up)."""
    phases = collections.defaultdict(list)
    spans = collections.defaultdict(list)
    for row in rows:
        if not row.get("phase_s"):
            continue
        timing = json.loads(row["phase_s"])
        start = timing.pop("started_at")
        for name, seconds in timing.items():
            phases[name].append(seconds)
        # On the node: the done-check before compress_and_evaluate, the layer rows after it.
        spans[row["node_id"]].append((start - timing.get("check_done", 0.0), start + row["wall_s"] + timing.get("write_layers", 0.0)))
    gaps = []
    for node_spans in spans.values():
        node_spans.sort()
        gaps += [max(0.0, b[0] - a[1]) for a, b in zip(node_spans, node_spans[1:])]
    means = {name: sum(v) / len(v) for name, v in phases.items()}
    means["between_trials"] = sum(gaps) / len(gaps) if gaps else float("nan")
    return means


def run_sweep(deploy: Deployment, trials: int, distill_steps: int, workdir: Path) -> dict:
    from sqz import metrics

    run_id = f"scale-{trials}-{int(time.time())}"
    run_url = f"s3://bench/runs/{run_id}"
    before = collections.Counter(deploy.requests())
    load_before = _load()
    log = open(workdir / f"{run_id}.log", "wb")
    start = time.time()
    process = subprocess.run(_sweep_command(deploy, trials, run_id, distill_steps), stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    load_after = _load()
    if process.returncode:
        raise RuntimeError(f"sqz sweep exited {process.returncode}: see {workdir / f'{run_id}.log'}")
    requests = collections.Counter(deploy.requests()) - before
    stages = _flow_stages(run_id)
    rows = metrics.read_table(run_url, "sweep_trials").to_pylist()
    objects = deploy.objects(f"runs/{run_id}/")
    kinds = collections.Counter()
    parquet = collections.Counter()
    objects = [o for o in objects if not o["Key"].endswith("/")]  # folder markers are no files
    for obj in objects:
        rel = obj["Key"][len(f"runs/{run_id}/"):]
        kinds[rel.split("/", 1)[0]] += 1
        if rel.startswith("metrics/") and rel.endswith(".parquet"):
            parquet[rel.split("/")[1]] += 1
    sizes = {o["Key"].rsplit("/", 1)[-1]: o["Size"] for o in objects if o["Key"].startswith(f"runs/{run_id}/report/")}
    tasks = stages["tasks"]
    sweep_span = tasks.get("sweep-trials", (math.nan, math.nan))
    report_span = tasks.get("report-folder", (math.nan, math.nan))
    compact_span = tasks.get("compact-metrics", (sweep_span[1], sweep_span[1]))
    trial_sum = sum(r["wall_s"] for r in rows)
    ideal = trial_sum / SLOTS
    stage_s = {
        "plan": sweep_span[0] - start,  # CLI start-up and plan, the flow's start, the baseline's evaluation, Ray connect
        "sweep": sweep_span[1] - sweep_span[0],
        "compact": compact_span[1] - compact_span[0],
        "report": report_span[1] - report_span[0],
        "artifacts": stages["end"] - report_span[1],  # report, trials and files artifacts, the event
        "exit": start + wall - stages["end"],
    }
    queries = _query_times(run_url)
    return {
        "trials": trials, "rows": len(rows), "run_id": run_id, "wall_s": wall, "trial_sum_s": trial_sum, "ideal_s": ideal,
        "overhead_sweep_stage": (stage_s["sweep"] - ideal) / ideal, "overhead_end_to_end": (wall - ideal) / ideal,
        "stage_s": stage_s, "trial_s": _trial_costs(rows), "mean_trial_wall_s": trial_sum / max(1, len(rows)),
        "s3_requests": dict(requests), "s3_requests_per_trial": sum(requests.values()) / trials,
        "objects": len(objects), "objects_per_trial": len(objects) / trials, "objects_by_folder": dict(kinds),
        "parquet_files": dict(parquet), "report_bytes": sizes, "artifact_bytes": stages["artifact_bytes"],
        "artifact_versions": stages["artifact_versions"], "queries": queries, "load_before": load_before, "load_after": load_after,
    }  # fmt: skip


def _query_times(run_url: str) -> dict:
    """Seconds to read the compacted sweep_trials table: sqz's reader, pandas (pyarrow
    dataset over S3), and a DuckDB query over that dataset (if duckdb is importable;
    DuckDB's own S3 reader is an extension it downloads, so it scans pyarrow's dataset)."""
    import pyarrow.dataset as ds

    from sqz import metrics, storage

    out = {}
    started = time.perf_counter()
    rows = metrics.read_table(run_url, "sweep_trials").num_rows
    out["sqz_read_table_s"] = time.perf_counter() - started
    fs, path = storage.resolve(metrics.table_url(run_url, "sweep_trials"))
    started = time.perf_counter()
    frame = ds.dataset(path, filesystem=fs, format="parquet", ignore_prefixes=[".", "_"]).to_table().to_pandas()
    out["pandas_s"], out["pandas_rows"] = time.perf_counter() - started, len(frame)
    try:
        import duckdb
    except ImportError:
        out["duckdb"] = "not installed"
        return out
    query = ("SELECT bits, count(*) AS trials, max(top1) AS best_top1, min(size_bytes) AS smallest "
             "FROM dataset GROUP BY bits ORDER BY bits")  # fmt: skip
    duckdb.sql("SELECT 1").fetchall()  # DuckDB's own start-up is not the query's
    started = time.perf_counter()
    dataset = ds.dataset(path, filesystem=fs, format="parquet", ignore_prefixes=[".", "_"])  # noqa: F841 (DuckDB scans it by name)
    answer = duckdb.sql(query).fetchall()
    out["duckdb_s"], out["duckdb_answer"] = time.perf_counter() - started, [list(r) for r in answer]
    started = time.perf_counter()
    duckdb.sql(query).fetchall()  # the same dataset again: listing done, files read again
    out["duckdb_again_s"] = time.perf_counter() - started
    out["rows"] = rows
    return out


def run_resume(deploy: Deployment, trials: int, distill_steps: int, workdir: Path) -> dict:
    """Kill an N-trial sweep (its whole process group, as a lost driver machine would be)
    once half its rows exist; rerun the same command; time from the rerun's start to its
    first new trial's start, and count what ran twice."""
    from sqz import metrics

    run_id = f"resume-{trials}-{int(time.time())}"
    run_url = f"s3://bench/runs/{run_id}"
    command = _sweep_command(deploy, trials, run_id, distill_steps)
    with open(workdir / f"{run_id}-1.log", "wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while first.poll() is None and len(metrics.table_files(run_url, "sweep_trials")) < trials // 2:
            time.sleep(2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    time.sleep(3)  # Ray notices the driver is gone and ends its trials
    done_before = {r["trial_id"] for r in metrics.read_table(run_url, "sweep_trials").to_pylist()}
    load_before = _load()
    with open(workdir / f"{run_id}-2.log", "wb") as log:
        started = time.time()
        second = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - started
    rows = metrics.read_table(run_url, "sweep_trials").to_pylist()
    new = [r for r in rows if r["trial_id"] not in done_before]
    starts = sorted(json.loads(r["phase_s"])["started_at"] for r in new if r.get("phase_s"))
    stages = _flow_stages(run_id)
    sweep_start = stages["tasks"].get("sweep-trials", (math.nan,))[0]
    return {
        "trials": trials, "done_at_kill": len(done_before), "rerun_exit_code": second.returncode, "rerun_wall_s": wall,
        "rows_after": len(rows), "distinct_trials_after": len({r["trial_id"] for r in rows}), "ran_in_rerun": len(new),
        "first_new_trial_s": (starts[0] - started) if starts else math.nan, "sweep_task_start_s": sweep_start - started,
        "load_before": load_before,
    }  # fmt: skip


# ------------------------------------------------------------------ printing


def _fit(ns: list[int], values: list[float]) -> str:
    """a + b*N by least squares, and the log-log slope (1 = linear) between the end points."""
    if len(ns) < 2 or any(not math.isfinite(v) for v in values):
        return "n/a (one N)" if len(ns) < 2 else "n/a"
    mean_n, mean_v = sum(ns) / len(ns), sum(values) / len(values)
    b = sum((n - mean_n) * (v - mean_v) for n, v in zip(ns, values)) / sum((n - mean_n) ** 2 for n in ns)
    a = mean_v - b * mean_n
    slope = math.log(values[-1] / values[0]) / math.log(ns[-1] / ns[0]) if values[0] > 0 and values[-1] > 0 else math.nan
    return f"{a:.4g} + {b:.4g} x N (log-log slope {slope:.2f})"


def report(results: list[dict], resume: dict | None, distill_steps: int, nodes: int) -> dict:
    tables = []
    ns = [r["trials"] for r in results]
    where = "2 Ray nodes x 1 CPU" if nodes == 2 else f"1 Ray node x {SLOTS} CPUs"
    print(f"\nsqz sweep at scale: digits {ARCH}, N/2 densities x {{8, 6}} bits, retrain 2 steps oneshot, "
          f"distill {distill_steps} steps; {where}; S3 = moto; Prefect server; {os.cpu_count()} cores")  # fmt: skip
    columns = ["trials", "wall s", "sum of trials s", "ideal s (sum/2)", "sweep stage s", "overhead sweep stage",
               "overhead end-to-end", "mean trial s", "load 1m before/after"]  # fmt: skip
    rows = [[r["trials"], round(r["wall_s"], 1), round(r["trial_sum_s"], 1), round(r["ideal_s"], 1), round(r["stage_s"]["sweep"], 1),
             f"{100 * r['overhead_sweep_stage']:.1f}%", f"{100 * r['overhead_end_to_end']:.1f}%", round(r["mean_trial_wall_s"], 2),
             f"{r['load_before']:.1f}/{r['load_after']:.1f}"] for r in results]  # fmt: skip
    tables.append({"title": "Wall time and overhead over the ideal", "columns": columns, "rows": rows})
    stage_names = ["plan", "sweep", "compact", "report", "artifacts", "exit"]
    tables.append({"title": "Stage seconds (share of wall)", "columns": ["trials", *stage_names],
                   "rows": [[r["trials"], *(f"{r['stage_s'][s]:.1f} ({100 * r['stage_s'][s] / r['wall_s']:.1f}%)" for s in stage_names)]
                            for r in results]})  # fmt: skip
    phase_names = sorted({p for r in results for p in r["trial_s"]})
    tables.append({"title": "A trial's cost by phase, mean seconds", "columns": ["trials", *phase_names],
                   "rows": [[r["trials"], *(round(r["trial_s"].get(p, math.nan), 3) for p in phase_names)] for r in results]})
    methods = sorted({m for r in results for m in r["s3_requests"]})
    tables.append({"title": "S3 requests per trial (whole command), by method", "columns": ["trials", "all", *methods],
                   "rows": [[r["trials"], round(r["s3_requests_per_trial"], 1),
                             *(round(r["s3_requests"].get(m, 0) / r["trials"], 2) for m in methods)] for r in results]})  # fmt: skip
    folders = sorted({f for r in results for f in r["objects_by_folder"]})
    tables.append({"title": "Objects in the run folder (per trial), by top folder", "columns": ["trials", "all", "per trial", *folders],
                   "rows": [[r["trials"], r["objects"], round(r["objects_per_trial"], 2),
                             *(r["objects_by_folder"].get(f, 0) for f in folders)] for r in results]})  # fmt: skip
    table_names = sorted({t for r in results for t in r["parquet_files"]})
    tables.append({"title": "Parquet files per metrics table after the sweep", "columns": ["trials", *table_names],
                   "rows": [[r["trials"], *(r["parquet_files"].get(t, 0) for t in table_names)] for r in results]})
    kinds = sorted({k for r in results for k in r["artifact_bytes"]})
    reports = sorted({k for r in results for k in r["report_bytes"]})
    tables.append({"title": "Report files and Prefect artifacts, bytes (largest version; versions)",
                   "columns": ["trials", *reports, *(f"artifact {k}" for k in kinds)],
                   "rows": [[r["trials"], *(r["report_bytes"].get(k, 0) for k in reports),
                             *(f"{r['artifact_bytes'].get(k, 0):,} ({r['artifact_versions'].get(k, 0)})" for k in kinds)]
                            for r in results]})  # fmt: skip
    tables.append({"title": "Reading the compacted sweep_trials table over S3 (seconds)",
                   "columns": ["trials", "sqz read_table", "pandas", "DuckDB query (incl. listing)", "DuckDB query again"],
                   "rows": [[r["trials"], round(r["queries"]["sqz_read_table_s"], 3), round(r["queries"]["pandas_s"], 3),
                             round(r["queries"]["duckdb_s"], 3) if "duckdb_s" in r["queries"] else r["queries"].get("duckdb"),
                             round(r["queries"].get("duckdb_again_s", math.nan), 3)]
                            for r in results]})  # fmt: skip
    fits = {
        "wall s": [r["wall_s"] for r in results], "sweep-stage overhead s": [r["stage_s"]["sweep"] - r["ideal_s"] for r in results],
        **{f"{s} s": [r["stage_s"][s] for r in results] for s in stage_names if s != "sweep"},
        "S3 requests": [sum(r["s3_requests"].values()) for r in results], "objects": [r["objects"] for r in results],
        "report.md bytes": [r["report_bytes"].get("report.md", 0) for r in results],
        **{f"artifact {k} bytes": [r["artifact_bytes"].get(k, 0) for r in results] for k in kinds},
    }  # fmt: skip
    tables.append({"title": "Fit of each cost against N", "columns": ["cost", "fit"],
                   "rows": [[name, _fit(ns, values)] for name, values in fits.items()]})
    if resume:
        tables.append({"title": "Resume: a sweep killed half-way, then the same command again",
                       "columns": ["trials", "done at kill", "ran in rerun", "rows after", "first new trial after s",
                                   "sweep task started after s", "rerun wall s", "load 1m"],
                       "rows": [[resume["trials"], resume["done_at_kill"], resume["ran_in_rerun"], resume["rows_after"],
                                 round(resume["first_new_trial_s"], 1), round(resume["sweep_task_start_s"], 1),
                                 round(resume["rerun_wall_s"], 1), round(resume["load_before"], 1)]]})  # fmt: skip
    for table in tables:
        print(f"\n{table['title']}")
        widths = [max(len(str(c)), *(len(str(row[i])) for row in table["rows"])) for i, c in enumerate(table["columns"])]
        print("  ".join(str(c).rjust(w) for c, w in zip(table["columns"], widths)))
        for row in table["rows"]:
            print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))
    largest = results[-1]
    headline = {
        f"overhead over ideal at {largest['trials']} trials (sweep stage)": f"{100 * largest['overhead_sweep_stage']:.1f}%",
        f"overhead end-to-end at {largest['trials']} trials": f"{100 * largest['overhead_end_to_end']:.1f}%",
        "mean trial wall s": round(largest["mean_trial_wall_s"], 2),
        "S3 requests per trial": round(largest["s3_requests_per_trial"], 1),
    }
    if "duckdb_s" in largest["queries"]:
        headline[f"DuckDB query, compacted {largest['trials']}-trial table"] = f"{largest['queries']['duckdb_s']:.3f} s"
    if resume:
        headline[f"rerun of a killed {resume['trials']}-trial sweep: first new trial after"] = f"{resume['first_new_trial_s']:.1f} s"
    return {"tables": tables, "headline": headline, "runs": results, "resume": resume, "distill_steps": distill_steps,
            "ray_nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="64,256,1024", help="sweep sizes, comma-separated, each even")
    parser.add_argument("--resume", type=int, default=0, help="also kill a sweep of this many trials half-way and time its rerun")
    parser.add_argument("--distill-steps", type=int, default=0,
                        help="codebook distillation steps per trial (sqz's default is 45; 0 keeps trials tiny)")
    parser.add_argument("--checkpoint", default=None, help="digits squeezenet_small safetensors (default: train one, cached)")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=2,
                        help="Ray nodes: 2 of 1 CPU (default), or 1 of 2 CPUs where a second node cannot start in time")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new one under /tmp)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write bench/results/scale.json")
    args = parser.parse_args()
    sizes = [int(n) for n in args.trials.split(",")]
    if any(n < 4 or n % 2 for n in sizes):
        parser.error("--trials: each size must be even and at least 4")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sqzscale-", dir="/tmp"))  # short: Ray socket paths
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else _baseline(ROOT / ".work" / "bench-scale" / "baseline.safetensors")
    deploy = Deployment(workdir, args.nodes)
    try:
        deploy.start()
        deploy.s3.upload_file(str(checkpoint), "bench", "baseline.safetensors")
        from results import record

        def save(results: list[dict], resume: dict | None, final: bool) -> None:
            # After every sweep: a bench stopped later keeps what it measured.
            figures = report(results, resume, args.distill_steps, args.nodes) if final else {
                "runs": results, "resume": resume, "distill_steps": args.distill_steps, "partial": True}
            if not args.no_record:
                path = record("scale", figures, command="python bench/bench_scale.py " + " ".join(sys.argv[1:]),
                              notes="Ray nodes on one 2-core VM shared with other work; the load average is in the tables")  # fmt: skip
                print(f"recorded {path}", flush=True)

        results = []
        for n in sizes:
            print(f"sweep of {n} trials (load {_load():.1f}) ...", flush=True)
            results.append(run_sweep(deploy, n, args.distill_steps, workdir))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "queries"}, default=str)[:600], flush=True)
            save(results, None, final=False)
        resume = None
        if args.resume:
            print(f"killed-and-resumed sweep of {args.resume} trials (load {_load():.1f}) ...", flush=True)
            resume = run_resume(deploy, args.resume, args.distill_steps, workdir)
        save(results, resume, final=True)
    finally:
        deploy.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

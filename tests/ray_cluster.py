"""A real two-node Ray cluster on this machine, for the `cluster` tests: `ray start --head`
and `ray start --address` as separate process groups, each node with its own temp dir, each
ended by its own process id.

Two nodes on one machine need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (with 0 the second node
panics); Ray then resolves 127.0.0.1 to the machine's interface address for traffic
between the nodes, which stays on this machine. Clients connect through 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

from ray.exceptions import RayError

from processes import stop_process_group

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
NODE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    # The Ray Client proxy forks a server per client; gRPC's fork handlers in the proxy then
    # abort that child at random ("ev_epoll1_linux.cc: Check failed: next_worker->state ==
    # KICKED", ray-project/ray#63202). The child execs at once, so the handlers are not needed.
    "GRPC_ENABLE_FORK_SUPPORT": "false",
}


class TwoNodeRayCluster:
    """Head (1 CPU, GCS on ``gcs_port``, Ray Client server on ``client_port``, the
    dashboard and its job API on 127.0.0.1:``dashboard_port``) and one worker node (1 CPU).
    ``address`` and ``client_address`` are what `sqz --ray-address` takes. Every node
    runs with the token authentication of the environment it is started from
    (RAY_AUTH_MODE, RAY_AUTH_TOKEN: the session's, tests/conftest.py)."""

    def __init__(self, base_dir: str, gcs_port: int, client_port: int, *, dashboard_port: int):
        for name, port in (("client", client_port), ("dashboard", dashboard_port)):
            if 10002 <= port <= 19999:
                raise ValueError(f"{name} port {port} lies in Ray's worker port range 10002-19999")
        self.base_dir, self.gcs_port, self.client_port = base_dir, gcs_port, client_port
        self.address = f"127.0.0.1:{gcs_port}"
        self.client_address = f"ray://127.0.0.1:{client_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self._dashboard_port = dashboard_port
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self._workers_started = 0
        self._gcs = None  # ray._raylet.GcsClient, once the head's GCS listens

    def _start_node(self, name: str, args: list[str]) -> subprocess.Popen:
        # Temp dirs stay short: Ray's unix socket paths under them must stay below 107 bytes.
        temp_dir = os.path.join(self.base_dir, name)
        os.makedirs(temp_dir, exist_ok=True)
        log = open(os.path.join(self.base_dir, f"{name}.log"), "wb")
        # --block keeps `ray start` in the foreground as the parent of the node's processes,
        # so the node is ended through this process's group, not by `ray stop` (which would
        # end every Ray on the machine, the session's local one included).
        command = [RAY, "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp_dir,
                   "--disable-usage-stats", "--block"]  # fmt: skip
        with log:
            return subprocess.Popen(command, env={**os.environ, **NODE_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip

    def start(self, timeout_s: float = 120) -> None:
        try:
            # The dashboard serves the job API (what `ray job submit` and RayJobs use), so the
            # tests can show that it refuses a submission without the token.
            self.head = self._start_node("head", ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                                                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self._dashboard_port),
                                                  "--ray-client-server-port", str(self.client_port)])  # fmt: skip
            self.wait_for_nodes(1, timeout_s)
            self.start_worker(timeout_s)
        except BaseException:
            self.stop()  # nothing is left running when start-up fails
            raise

    def start_worker(self, timeout_s: float = 120) -> None:
        """Start (or, after :meth:`kill_worker_node`, restart) the second node and wait until it is alive."""
        if self.worker is not None:
            stop_process_group(self.worker, grace_s=10)
        self._workers_started += 1
        self.worker = self._start_node(f"node{self._workers_started}", ["--address", self.address])
        self.wait_for_nodes(2, timeout_s)

    def nodes(self) -> list[dict]:
        """The cluster's nodes as its GCS lists them, asked in-process with Ray's own GCS
        client (what `ray status` and the autoscaler use): 0.01 s a call, where a client
        process with its own ray.init cost 1.5-3 s (the test process itself is connected to
        the session's local Ray, so it cannot ray.init here)."""
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        if self._gcs is None:
            # The client waits 40 s for a GCS that does not listen yet: connect first.
            host, port = self.address.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=2).close()
            self._gcs = GcsClient(address=self.address)
        infos = self._gcs.get_all_node_info(timeout=10).values()
        return [{"node_id": info.node_id.hex(), "alive": info.state == GcsNodeInfo.GcsNodeState.ALIVE,
                 "head": info.is_head_node} for info in infos]  # fmt: skip

    def alive_node_ids(self) -> list[str]:
        return [n["node_id"] for n in self.nodes() if n["alive"]]

    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self.nodes() if n["alive"] and n["head"])

    def wait_for_nodes(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for name, process in (("head", self.head), (f"node{self._workers_started}", self.worker)):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"the Ray {name} node exited: {self.log(name)[-1500:]}")
            try:
                if len(self.alive_node_ids()) == count:
                    return
            except (OSError, RayError):
                pass  # the GCS is not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {count} live node(s) within {timeout_s:.0f} s")
            time.sleep(0.25)

    def raylet_pid(self) -> int:
        """The second node's raylet: a child of its `ray start` process."""
        assert self.worker is not None
        children = subprocess.run(["pgrep", "-P", str(self.worker.pid), "-x", "raylet"], capture_output=True, text=True)
        pids = [int(p) for p in children.stdout.split()]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet under pid {self.worker.pid}, found {pids}")
        return pids[0]

    def worker_node_pids(self, actor_method: str) -> set[int]:
        """The second node's worker processes executing ``actor_method`` (e.g.
        ``ImplicitFunc.train``, a Tune trial at work) right now: Ray titles a worker process
        ``ray::<class>.<method>`` while it runs that method and ``ray::<class>`` when idle."""
        pattern = "^ray::" + re.escape(actor_method) + "([^A-Za-z0-9_]|$)"
        found = subprocess.run(["pgrep", "-P", str(self.raylet_pid()), "-f", pattern], capture_output=True, text=True)
        return {int(pid) for pid in found.stdout.split()}

    def _descendants(self, pid: int) -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [p for child in map(int, children) for p in (child, *self._descendants(child))]

    def kill_worker_node(self) -> int:
        """The second node dies as a machine would: its raylet and every process under it
        (workers, agents) are killed outright, so no task of it finishes after the kill.
        Ray workers run in sessions of their own, so the node's process group is not enough:
        its process tree is collected first (children are re-parented once the raylet dies).
        Returns the raylet's pid."""
        assert self.worker is not None
        raylet = self.raylet_pid()
        tree = [self.worker.pid, *self._descendants(self.worker.pid)]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGSTOP)  # nothing in the tree acts (or forks) while it is being killed
            except ProcessLookupError:
                pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return raylet

    def log(self, name: str) -> str:
        with open(os.path.join(self.base_dir, f"{name}.log"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Worker first, then head; each by its own process group. The head's group is
        SIGKILLed after 2 s: on SIGTERM everything in it but `ray start` and the GCS server
        is gone within 0.5 s, and those two were still there 10 s later."""
        for process, grace_s in ((self.worker, 10), (self.head, 2)):
            if process is not None:
                stop_process_group(process, grace_s=grace_s)

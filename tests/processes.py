"""Ending the servers and workers the tests start, by their own ids."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the process group the test started the process in (a server runs its
    workers as children), then SIGKILL if it has not ended within ``grace_s``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # `ray start --block` can outlive its SIGTERM'd children: whatever is left of the group goes.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


class ListeningSockets:
    """Every listening socket (TCP listen, bound UDP) held at any moment by a process or
    its descendants (Ray's GCS, raylet, agents and workers; Prefect's server), sampled
    every 0.3 s by a thread until the process exits or :meth:`stop` is called. ``found``
    maps (host, port) to the holder's name and command line."""

    def __init__(self, process: subprocess.Popen) -> None:
        import threading

        self.process, self.found = process, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.process.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set() and self.process.poll() is None:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for member in family:
                try:
                    for conn in member.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):
                            self.found[(conn.laddr.ip, conn.laddr.port)] = f"{member.name()}: {' '.join(member.cmdline())[:300]}"
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self._stop.wait(0.3)

    def stop(self) -> dict[tuple[str, int], str]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.found


def is_loopback(host: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback

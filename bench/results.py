"""Where every `bench/` script records what it measured, so the README and the docs render
their figures from these files instead of copying them by hand (`docs/render.py`).

One JSON file per benchmark and variant under ``bench/results/``: the figures, the date,
the machine and the commit they were measured on. A rerun replaces the file; earlier
figures stay in git history.

    from results import record
    record("digits", {"baseline_top1": 98.6, ...}, command="python bench/bench_digits.py")
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = RESULTS_DIR.parents[1]


def machine() -> dict:
    """The machine the figures come from: enough to tell a 2-core VM from an H200 node."""
    info = {"cpu_cores": os.cpu_count(), "platform": platform.platform(terse=True), "python": platform.python_version()}
    try:
        import torch  # the benches import it anyway; the GPU, when there is one, is the machine

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20)
    except OSError:
        pass
    return info


def commit() -> str:
    """The commit measured, with ``+dirty`` when the tree had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dirty_files() -> list[str]:
    """Tracked files with uncommitted changes when the figures were taken: in a tree shared
    with other work, "+dirty" alone cannot say whether the measured code was among them."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        return []
    return sorted(line[3:] for line in status.splitlines() if line[3:])


def record(name: str, figures: dict, *, command: str, notes: str = "") -> Path:
    """Writes ``bench/results/<name>.json``: ``figures`` (any JSON-able mapping) with the
    date, machine, commit and the command that made them. Returns the path."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"result name {name!r}: use letters, digits, '-' and '_' only")
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
        "name": name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "commit": commit(),
        "dirty_files": dirty_files(),
        "command": command,
        "notes": notes,
        "figures": figures,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # a bench killed while writing leaves the previous figures whole
    return path


def load(name: str) -> dict:
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())

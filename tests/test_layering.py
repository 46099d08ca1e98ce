import json
import subprocess
import sys

CORE = ["sqz", "sqz.config", "sqz.models", "sqz.data", "sqz.engine", "sqz.compress", "sqz.storage",
        "sqz.metrics", "sqz.report", "sqz.runs", "sqz.trial", "sqz.cli", "sqz.checkpoint", "sqz.train_cli",
        "sqz.data.prepare", "sqz.evaluation", "sqz.table2", "sqz.catalog", "sqz.runs_cli"]  # fmt: skip


def test_core_imports_neither_ray_nor_prefect():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'prefect'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_distributed_layer_does_import_ray():
    # The check above is only meaningful if the detector sees ray when it is imported.
    code = "import sys, sqz.distributed.cluster; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"

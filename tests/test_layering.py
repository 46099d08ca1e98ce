"""The import rules between layers (ARCHITECTURE.md): core imports neither Ray nor
Prefect; the Ray layer (sqz.distributed) imports no Prefect; the CLI (sqz.cli) imports
neither Ray nor torch (nor Prefect) at module level. Each check imports in a fresh
interpreter and lists what got loaded."""

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import sqz

CLI = ["sqz.cli", *(f"sqz.cli.{m.name}" for m in pkgutil.iter_modules([os.path.join(os.path.dirname(sqz.__file__), "cli")])
                    if m.name != "__main__")]  # __main__ runs the command
DISTRIBUTED = ["sqz.distributed", *(f"sqz.distributed.{m.name}" for m in pkgutil.iter_modules(
    [os.path.join(os.path.dirname(sqz.__file__), "distributed")]))]  # fmt: skip
CORE = ["sqz", "sqz.config", "sqz.architectures", "sqz.models", "sqz.data", "sqz.engine", "sqz.compress", "sqz.storage",
        "sqz.metrics", "sqz.report", "sqz.runs", "sqz.runs.layout", "sqz.runs.manifest", "sqz.runs.claims",
        "sqz.runs.catalog", "sqz.trial", "sqz.checkpoint", "sqz.data.prepare", "sqz.evaluation", "sqz.table2",
        "sqz.byte_account", "sqz.sensitivity", "sqz.import_dc", "sqz.fidelity", "sqz.logs",
        *CLI]  # fmt: skip


def _loaded_after_importing(modules: list[str], roots: tuple[str, ...], then: str = "") -> list[str]:
    """The packages among ``roots`` loaded once ``modules`` are imported and the ``then``
    statement ran."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"{then}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(roots)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_neither_ray_nor_prefect():
    assert _loaded_after_importing(CORE, ("ray", "prefect")) == []


def test_cli_imports_neither_ray_nor_torch_nor_prefect_at_module_level():
    assert len(CLI) > 10  # every command's module is in the list
    assert _loaded_after_importing(CLI, ("ray", "torch", "prefect")) == []


def test_cli_parser_builds_without_torch_ray_or_prefect():
    # `sqz --help` builds every command's parser, whose help shows the configs' defaults:
    # those must come from torch-free modules (sqz.config), not from the modules that run them.
    building = "import sqz.cli; assert 'import-dc' in sqz.cli.build_parser().format_help()"
    assert _loaded_after_importing(["sqz.cli"], ("ray", "torch", "prefect"), then=building) == []


def test_architectures_and_configs_load_no_torch():
    # What the CLI refuses bad input with (model names, layer sizes, configs) answers in
    # the time of its own imports: torch alone takes ~2 s to import.
    assert _loaded_after_importing(["sqz.architectures", "sqz.config"], ("torch", "ray", "prefect")) == []


@pytest.mark.slow
def test_ray_layer_imports_no_prefect():
    assert len(DISTRIBUTED) > 3
    assert _loaded_after_importing(DISTRIBUTED, ("prefect",)) == []


@pytest.mark.slow
def test_detector_sees_what_is_imported():
    # The checks above are only meaningful if the detector sees a package when it is imported,
    # by a module or by the ``then`` statement (torch here; the parser check runs its code so).
    assert _loaded_after_importing(["sqz.distributed.cluster"], ("ray", "prefect", "torch"), then="import torch") == ["ray", "torch"]
    assert _loaded_after_importing(["flows.common"], ("prefect",)) == ["prefect"]


def _sqz_imports(path: str) -> list[str]:
    """Every sqz module ``path`` imports, at module level or inside a function (relative
    imports count: they can only name sqz modules)."""
    import ast

    with open(path) as source:
        tree = ast.parse(source.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "sqz"]
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "sqz"):
            found.append("." * node.level + (node.module or ""))
    return found


def test_config_is_the_ground_floor():
    # sqz.config is what every other module builds on: one import upwards (even inside a
    # function) and the floors depend on each other.
    assert _sqz_imports(os.path.join(os.path.dirname(sqz.__file__), "config.py")) == []


def test_the_import_finder_sees_function_level_and_relative_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom . import x\n\ndef f():\n    from sqz.fidelity import g\n    import sqz.runs.manifest\n")
    assert sorted(_sqz_imports(str(sample))) == [".", "sqz.fidelity", "sqz.runs.manifest"]

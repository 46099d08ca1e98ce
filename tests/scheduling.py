"""How `make test` spreads the suite over its two pytest-xdist workers.

- A module's tests stay on one worker, so its module fixtures (a whole pipeline run, say)
  run once; the `cluster` modules share one worker, so the two-node Ray cluster starts once.
- The longest modules start first (longest-processing-time-first): on 2 cores the suite
  ends when the worker that drew the last long module ends it, so that one must not start
  late. A module's length is the seconds measured below (refresh them from
  `--durations=0` when the suite changes much); a module not listed counts as long, so it
  starts early rather than late.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

# The modules whose tests use the session's two-node Ray cluster (marked `cluster`).
CLUSTER_MODULES = frozenset({"tests/test_ray_cluster.py", "tests/test_prefect_server.py"})
# Setup + call + teardown seconds per module, summed, in one `make test` (2 workers) on
# the 2-core development machine, 2026-12-04; rounded.
MEASURED_SECONDS = {
    "tests/test_sweep.py": 183, "tests/test_pipeline.py": 181, "tests/test_prefect_server.py": 149,
    "tests/test_train.py": 136, "tests/test_flows.py": 119, "tests/test_storage_metrics.py": 104,
    "tests/test_ray_cluster.py": 75, "tests/test_imagenet_data.py": 73, "tests/test_fidelity.py": 57,
    "tests/test_codec.py": 42, "tests/test_prune_schedule.py": 22, "tests/test_layering.py": 17,
    "tests/test_eval_cli.py": 14, "tests/test_data_engine.py": 13, "tests/test_compress.py": 7,
    "tests/test_dcnet.py": 7, "tests/test_cli.py": 7, "tests/test_models.py": 6, "tests/test_infra.py": 3,
    "tests/test_runs.py": 2, "tests/test_links.py": 1, "tests/test_prefect_yaml.py": 1, "tests/test_gptq.py": 1,
    "tests/test_progress.py": 1, "tests/test_cluster.py": 1, "tests/test_config.py": 1, "tests/test_docs.py": 6,
    "tests/test_sweep_scale.py": 3,  # calls, after test_sweep on the same worker, load average ~4 (2026-12-08)
}  # fmt: skip


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def work_unit(nodeid: str) -> str:
    """What one worker runs whole: the test's module, or all the cluster modules together."""
    module = module_of(nodeid)
    return "two-node cluster" if module in CLUSTER_MODULES else module


def longest_first(items: list[pytest.Item]) -> None:
    """Sorts ``items`` (in place, stably) so that the longest work units come first."""
    for item in items:
        if "cluster" in item.keywords and module_of(item.nodeid) not in CLUSTER_MODULES:
            raise pytest.UsageError(f"{item.nodeid} is marked cluster: add its module to CLUSTER_MODULES in tests/scheduling.py")
    unit_seconds: dict[str, float] = defaultdict(float)
    for module in {module_of(item.nodeid) for item in items}:
        unit_seconds[work_unit(module)] += MEASURED_SECONDS.get(module, math.inf)
    items.sort(key=lambda item: -unit_seconds[work_unit(item.nodeid)])


def make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scope scheduling with our work units, in collection order (the order
    ``longest_first`` made). pytest-xdist's own `--dist loadgroup` cannot group these with
    pytest 9: it renames test ids through an attribute pytest 9 no longer reads."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # by default xdist would put the units with most tests first
    return ModuleScheduling(config, log)

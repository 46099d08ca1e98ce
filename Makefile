# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv/ first
# if it is missing (a second call installs nothing: the stamp file is newer than
# pyproject.toml).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORK := $(CURDIR)/.work

# The embedded Ray listens on 127.0.0.1 only (sqz.distributed.cluster sets Ray's
# single-machine switch for every local start; this says so for the `ray` CLI too), so
# nothing off this machine reaches it and it runs without token auth. A cluster
# (--ray-address) is reached with RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN: export both
# before calling sqz against one. No usage stats; Prefect's home inside the project, no
# analytics, and time for the ephemeral API to start on 2 cores.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export PREFECT_HOME ?= $(WORK)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
# Ray Train's preemption watcher, one more actor process per training run that polls for
# spot-node preemption notices, has nothing to watch on one machine (leave it on for a
# cluster of preemptible nodes).
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER ?= 0
# Ray Train's controller polls its workers every 2 s by default, so a run ends up to ~5 s
# after its last epoch (two polls, then shutdown); on one machine a 0.5 s poll costs
# nothing and ends every training run ~4 s sooner.
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.5
# The digits and their splits, as scikit-learn gives them, cached inside the project: a
# process that reads them there (each Ray worker) does not import sklearn (~1.7 CPU-s).
export SQZ_CACHE_DIR ?= $(WORK)/cache

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m sqz.compress.warm  # numba kernels compiled once, not by each first trial
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sqz run

# Two pytest-xdist workers: the suite waits on Ray and Prefect as much as it computes, so
# two at once keep both cores busy (tests/scheduling.py: which tests go where).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS)

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_pipeline.py

clean:
	rm -rf sqz-runs .work .ray

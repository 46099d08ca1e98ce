"""The Ray layer: the only sqz code that imports ray. Core functions do the work; this
package only launches them on a cluster (a local one started here, or ``ray://``)."""

import os

# Ray reads this when it is imported (hence here, before any module of this package
# imports ray); the driver then drops matching forwarded lines, nothing else. They are:
# - Ray Train's PlacementGroupCleaner, every second: it queries the state API, which
#   needs the dashboard (not part of ray[train,tune]);
# - Ray Train's per-report INFO line, per worker per epoch: it is logged under a file
#   path as logger name, so RunConfig(logging_config=...) cannot quiet it;
# - Ray core's warning about Ray Train's own PreemptionWatcher actor.
# A value set by the user wins.
os.environ.setdefault(
    "RAY_DEDUP_LOGS_SKIP_REGEX",
    r"State API may be temporarily unavailable|Reporting training result \d+: TrainingReport"
    r"|'PreemptionWatcher' .* has constructor arguments",
)

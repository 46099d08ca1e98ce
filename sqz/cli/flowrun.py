"""Running a command's Prefect flow: Prefect's settings, the flow run's name, and bad
input reported once.

Prefect is imported here only when a command runs its flow, so `sqz --help` and input
errors answer without it. With PREFECT_API_URL set, flow runs go to that server (and
its UI); without, to an ephemeral API that Prefect starts for the process."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

__all__ = ["prefect_defaults", "run_flow"]


def prefect_defaults() -> None:
    """Environment Prefect reads at import; call before importing flows/ (CLI and bench)."""
    # The ephemeral API needs ~13 s to start on 2 cores, close to Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # sqz's own log records (progress, a storage operation retried) go to the flow run's logs too.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sqz")
    if os.environ.get("PREFECT_HOME"):
        # Prefect creates its home without parents; a fresh ./.work/prefect would fail.
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)


# Failures the CLI reports itself, in one line: bad input (ValueError, FileNotFoundError),
# and a sweep whose trials failed or were interrupted (sqz.distributed.sweep.SweepIncomplete
# and its TrialsFailed, named here: importing them would import Ray); each failed trial
# already said why in one line.
_REPORTED_BY_THE_CLI = ("ValueError", "FileNotFoundError", "SweepIncomplete", "TrialsFailed")


class _BadInputOnce(logging.Filter):
    """Drops Prefect's console copies of a failure the CLI reports in one line (its
    traceback, "Finished in state Failed"). sqz's own records pass: a failed trial's line
    names its error. The flow run's log on the API keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "sqz" or record.name.startswith("sqz."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and any(cls.__name__ in _REPORTED_BY_THE_CLI for cls in type(exc).__mro__):
            return False
        text = record.getMessage()
        if record.levelno < logging.ERROR and "Finished in state Failed" not in text:
            return True
        return not any(f"{name}:" in text or f"{name}(" in text for name in _REPORTED_BY_THE_CLI)


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    seen: list[logging.Handler] = []
    # Prefect's logging config puts its console handler on the root logger.
    for logger in [logging.root, logging.getLogger("prefect"), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                                                 if n.startswith("prefect."))]:  # fmt: skip
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and handler not in seen:
                seen.append(handler)
    return seen


def run_flow(flow_of: Callable[[], Any], name: str, **parameters: Any) -> Any:
    """Call the flow that ``flow_of()`` imports, its run named ``name`` (the sqz run id
    and stage, shown in the UI), with ``parameters``."""
    if parameters.get("ray_address"):
        # A cluster that does not answer or refuses this client's token: one line now,
        # before Prefect and the flow's imports (seconds), not after.
        from sqz.cluster_access import check_ray_access

        check_ray_access(parameters["ray_address"])
    prefect_defaults()
    flow = flow_of()
    handlers = _console_handlers()
    quiet = _BadInputOnce()
    for handler in handlers:
        handler.addFilter(quiet)
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        return flow.with_options(flow_run_name=name)(**parameters)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code not in (401, 403):
            raise
        # A server with basic auth (PREFECT_SERVER_API_AUTH_STRING) and no or a wrong
        # string here: one line, never the string itself.
        given = "a wrong one was given" if os.environ.get("PREFECT_API_AUTH_STRING") else "none was given"
        raise ValueError(f"PREFECT_API_AUTH_STRING: the Prefect API at {exc.request.url.copy_with(path='/api')} refused "
                         f"this client ({exc.response.status_code}; {given}): set it to the server's user:password") from None  # fmt: skip
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)

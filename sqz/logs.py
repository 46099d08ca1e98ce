"""Where sqz's log lines go when a person runs a command.

Core modules and the Ray layer log to ``logging.getLogger("sqz.<area>")`` and never
print: the same line then reaches a terminal, a file, or a Prefect flow run's log
(``PREFECT_LOGGING_EXTRA_LOGGERS=sqz`` gives the ``sqz`` logger Prefect's API handler).
Libraries configure nothing; the entry points (the CLI, bench scripts) call
``configure_console``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_console", "format_eta", "terminal_bar"]


def configure_console(level: int = logging.INFO) -> None:
    """Let sqz's INFO lines through. They propagate to the root logger, where the
    process's console handler prints them: Prefect's (every working command runs a flow,
    and Prefect puts its console handler on the root logger), so each line is printed
    once, formatted like Prefect's own. No handler is added here: one on the root logger
    before Prefect's import would make Prefect keep it instead of its own."""
    logging.getLogger("sqz").setLevel(level)


def format_eta(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``: an ETA an operator reads at a glance."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def terminal_bar(total: int, description: str, unit: str, initial: int = 0):
    """A tqdm bar on stderr when stderr is a terminal, else None: logs and CI consoles
    get the plain log lines only (a bar's redraws would fill them with noise)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit=unit, leave=False, file=sys.stderr)

"""What the command-line entry points share: which errors are the user's, and a terminal without traceback walls.

A user error (bad input or settings) ends a CLI run with one line, `motfm: error: <what> — <fix>`, and exit code 2.
Prefect still records the full traceback in the flow run's logs (the API log handler is untouched); only the
terminal handler drops the traceback of records that carry one, unless `--debug`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

# bad input or settings: the message names the file or key and the fix; a retry cannot help
__all__ = ["prefect_ready", "quiet_console_tracebacks", "STARTUP_TIMEOUT_S", "USER_ERRORS"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)


# Prefect's default (20 s, counted in 0.1 s polls) is too short for a first start on 2 slow cores
STARTUP_TIMEOUT_S = 180


def _without_traceback(format_record):
    """A formatter's `format` that leaves out a record's traceback. Prefect's API log handler formats the record
    first and caches the traceback on it (`exc_text`), so it is hidden for this call only, then restored."""
    def format(record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return format_record(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved

    format.motfm_quiet = True  # type: ignore[attr-defined]  # a marker attribute on our wrapper function
    return format


def quiet_console_tracebacks(debug: bool = False) -> None:
    """Drop tracebacks from Prefect's terminal handlers, leaving each record and the run logs Prefect sends to its
    API untouched; the error's message line stays."""
    if debug:
        return
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            fmt = handler.formatter
            ours = fmt is not None and hasattr(fmt.format, "motfm_quiet")
            if isinstance(handler, PrefectConsoleHandler) and fmt is not None and not ours:
                fmt.format = _without_traceback(fmt.format)  # wrap this handler only


@contextlib.contextmanager
def prefect_ready(say=print) -> Iterator[float]:
    """Prepare Prefect's embedded mode for a first run: migrate its SQLite database now (idempotent; on a fresh
    PREFECT_HOME this is what made the ephemeral server miss its start-up deadline) and allow the server
    STARTUP_TIMEOUT_S to start. Yields the seconds the migration took."""
    from prefect.server.database import provide_database_interface
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    seconds = 0.0
    if not PREFECT_API_URL.value():  # embedded mode: the database is ours to prepare
        t0 = time.perf_counter()
        asyncio.run(provide_database_interface().create_db())
        seconds = time.perf_counter() - t0
        say(f"motfm: Prefect database ready in {seconds:.1f}s")
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_TIMEOUT_S}):
        yield seconds

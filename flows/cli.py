"""What the command-line entry points share: which errors are the user's, and a quiet terminal.

A user error (bad input or settings: `motfm_core.errors.BadInput`, which the project raises for nothing else) ends a
command with one line, `motfm: error: <what> — <fix>`, and exit code 2; so do running out of disk or memory. Anything
else is a bug in motfm: one line says so and names the file its traceback was written to (exit code 1); Ctrl-C is
one line saying the run resumes. `--debug` shows every traceback as Python prints it.
Prefect still records the full traceback in the flow run's logs (the API log handler is untouched); on the
terminal, unless `--debug`, progress goes to stdout, warnings and errors to stderr, tracebacks are dropped, and the
failure reports of the task and the flow runs are left out (the error line says it once). Prefect's telemetry and
Dask's start-up chatter are off unless `--verbose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from motfm_core.errors import BadInput

__all__ = ["default_prefect_home", "failure_line", "one_line_failures", "prefect_ready", "quiet_console",
           "quiet_libraries", "START_GRACE_S", "STARTUP_TIMEOUT_S"]


# Prefect's default (20 s, counted in 0.1 s polls) is too short for a first start on 2 slow cores
STARTUP_TIMEOUT_S = 180
# a flow run shown as running that has not yet taken its run folder's hold is still starting, for at most this long
# (an assumed bound, well above the start-up timeout; not measured)
START_GRACE_S = 600


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    if "torch" not in sys.modules:  # a command that never imported torch cannot have run out of its memory
        return False
    from motfm_core.model.memory import is_out_of_memory

    return is_out_of_memory(error)


def _write_traceback(error: BaseException, folder: Path | None) -> Path:
    """The traceback of `error` in `<folder>/logs/error-<time>.txt` (a temporary folder when `folder` is None or
    cannot be written)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(error))
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for where in ([folder / "logs"] if folder is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            where.mkdir(parents=True, exist_ok=True)
            (where / name).write_text(text)
            return where / name
        except OSError:
            continue
    return Path("(not written: no writable folder)")


def failure_line(error: BaseException, run_dir: Path | None = None) -> tuple[str, int]:
    """What the terminal shows for a command that ended with `error`, and its exit code: bad input, a full disk or
    memory, one line each with the fix (2); a failure of the system (an I/O error) or a bug, one line naming the
    file holding the traceback (1)."""
    from motfm_core.files import disk_full_line, is_out_of_disk

    if isinstance(error, BadInput):
        return f"motfm: error: {error}", 2
    if is_out_of_disk(error):
        return f"motfm: error: {disk_full_line(error, run_dir or Path('.'))}", 2
    if _out_of_memory(error):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return (f"motfm: error: out of memory ({first}); lower the batch sizes (train.batch_size, sample.batch_size) "
                "or set train.memory_gb to what this machine has; the run resumes from the stage that failed"), 2
    saved = _write_traceback(error, run_dir)
    if isinstance(error, OSError) and error.errno is not None:  # the system's (EIO, EACCES), not ours
        return f"motfm: error: {error}; the traceback is in {saved} (--debug prints it)", 1
    return (f"motfm: internal error (a bug in motfm, not in your input): {type(error).__name__}: "
            f"{(str(error).strip().splitlines() or [''])[0][:300]}; the traceback is in {saved} (--debug prints it); "
            "please report it with that file"), 1


@contextlib.contextmanager
def one_line_failures(debug: bool = False, run_dir: Path | None = None) -> Iterator[None]:
    """Run a command's body; whatever ends it early is one line on stderr and an exit code (`failure_line`),
    Ctrl-C included. `debug` lets every exception through as Python prints it."""
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        print("\nmotfm: interrupted; run the same command again and it resumes where it stopped (finished stages "
              "and shards are kept)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001  # the command's last word: every failure becomes one line
        if debug:
            raise
        line, code = failure_line(e, run_dir)
        print(line, file=sys.stderr)
        sys.exit(code)


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


def _profile_names_a_server(home: Path) -> bool:
    """Whether the active profile in `home`/profiles.toml sets PREFECT_API_URL (the user chose a server there)."""
    import tomllib

    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, ValueError):
        return False
    active = profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def default_prefect_home(user_home: Path | None = None) -> str:
    """Prefect's home for a `motfm` command: $PREFECT_HOME when set; Prefect's own (~/.prefect) when its active
    profile names a server (the user's choice stands); else `.prefect` in the folder the command runs from, beside
    `outputs/` (what `make demo` uses), so a run and its flow-run history stay together whichever way it was
    started. Must run before Prefect is imported, which reads its settings then."""
    own = user_home if user_home is not None else Path.home() / ".prefect"
    if "PREFECT_HOME" not in os.environ and _profile_names_a_server(own):
        return str(own)
    return os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))


def quiet_libraries(verbose: bool = False) -> None:
    """Before Prefect or Dask start: no telemetry from the embedded server (offline it printed 'Failed to send
    telemetry' or a 'database is locked' traceback on every run) and, unless `verbose`, Dask's start-up logs at
    WARNING (about 40 lines per run), in this process and in the worker processes it spawns."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        logging.getLogger("distributed").setLevel(logging.WARNING)


_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine")


def _not_a_failure_report(record: logging.LogRecord) -> bool:
    """False for what a failing task or flow run prints about its failure (errors, and the 'Finished in state
    Failed(...)' line that repeats the error): the CLI's error line says it once."""
    if not record.name.startswith(_RUN_LOGGERS):
        return True
    return record.levelno < logging.ERROR and "Finished in state Failed" not in record.getMessage()


def quiet_console(debug: bool = False) -> None:
    """Prefect's terminal handlers: progress to stdout, warnings and errors to stderr, no tracebacks and no failure
    reports of task and flow runs (each record still reaches the run logs Prefect sends to its API). `debug`
    leaves them as Prefect made them."""
    if debug:
        return
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            fmt = handler.formatter
            if not isinstance(handler, PrefectConsoleHandler) or fmt is None or hasattr(fmt.format, "motfm_quiet"):
                continue
            fmt.format = _without_traceback(fmt.format)  # wrap this handler only
            handler.addFilter(_not_a_failure_report)
            handler.emit = _by_level(handler)  # per-instance routing


def _by_level(handler: logging.StreamHandler):
    """`handler.emit` writing records below WARNING to stdout, the rest to stderr."""
    emit = handler.emit

    def routed(record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        if handler.stream is not stream:
            try:
                handler.setStream(stream)
            except ValueError:  # the old stream was closed (a captured one): nothing to flush into it
                handler.stream = stream
            console = getattr(handler, "console", None)  # Prefect's handler prints through a rich Console
            if console is not None:
                console.file = stream
        emit(record)

    return routed


@contextlib.contextmanager
def prefect_ready(say=print) -> Iterator[float]:
    """Prepare Prefect's embedded mode for a first run: migrate its SQLite database now (idempotent; on a fresh
    PREFECT_HOME this is what made the ephemeral server miss its start-up deadline) and allow the server
    STARTUP_TIMEOUT_S to start. Yields the seconds the migration took."""
    import fcntl

    from prefect.server.database import provide_database_interface
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    seconds = 0.0
    embedded = not PREFECT_API_URL.value()
    if embedded:  # the database is ours to prepare
        t0 = time.perf_counter()
        home = Path(PREFECT_HOME.value())
        home.mkdir(parents=True, exist_ok=True)
        # one migration at a time: two first runs at once both migrated a fresh database and one died on
        # "duplicate column name"; the second now waits, then finds it migrated
        with open(home / ".motfm-migrate.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            asyncio.run(provide_database_interface().create_db())
        seconds = time.perf_counter() - t0
        say(f"motfm: Prefect database ready in {seconds:.1f}s")
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_TIMEOUT_S}):
        if embedded:
            say(f"motfm: Prefect server at {_server_dies_with_us()} (it ends with this run)")
            crashed = mark_orphaned_runs_crashed()
            if crashed:
                say(f"motfm: marked {len(crashed)} run(s) crashed whose process had ended while running: "
                    + ", ".join(crashed))
        yield seconds


# a process of its own that ends the embedded server when its parent (this process) is gone, however it went:
# the server is Prefect's subprocess, which a killed parent (kill -9, the out-of-memory killer) left listening
WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
while os.getppid() == parent and alive(server):
    time.sleep(0.5)
if alive(server):
    os.kill(server, signal.SIGTERM)
    for _ in range(50):
        time.sleep(0.1)
        if not alive(server):
            break
    else:
        os.kill(server, signal.SIGKILL)
"""


def _server_dies_with_us() -> str:
    """Start Prefect's embedded server now (the flow's client reuses it) with a watchdog process that stops it
    when this process ends without stopping it; returns its address."""
    import subprocess

    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.WARNING)  # its start-up banner: the caller says where it is in one line
    try:
        server.start(timeout=STARTUP_TIMEOUT_S)
    finally:
        prefect_logger.setLevel(level)
    if server.server_process is not None:
        subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server.server_process.pid)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    return server.address


def run_gone(folder: Path, started: float, now: float | None = None) -> bool:
    """Whether the run that started at `started` (seconds since the epoch) into `folder`, and is shown as running,
    has ended: its folder is not held now, and the hold file was written since the run started (the run took it),
    or the run is older than a start-up's grace (an older hold file may be an earlier run's, with this run still
    starting and not yet holding)."""
    from motfm_core.files import HOLD_FILE, folder_holder

    hold = folder / HOLD_FILE
    if not hold.exists() or folder_holder(folder) is not None:
        return False
    return hold.stat().st_mtime >= started or (time.time() if now is None else now) - started > START_GRACE_S


def mark_orphaned_runs_crashed() -> list[str]:
    """Mark crashed the flow runs shown as running whose process is gone: in embedded mode every run is a process
    of this machine, and a live one holds its run folder (`hold_folder`), so a running synth-and-eval or
    regenerate-synthetic run whose folder nobody holds was killed without reporting. Returns their names."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    marked = []
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
        for run in running:
            params = run.parameters or {}
            if "run_name" not in params:
                continue
            folder = Path(params.get("output_root") or "outputs").resolve() / str(params["run_name"])
            if run_gone(folder, run.start_time.timestamp() if run.start_time else 0.0):
                client.set_flow_run_state(run.id, Crashed(message="its process ended while running (killed); "
                                                          "marked crashed at the next start"), force=True)
                marked.append(f"{run.name} ({folder})")
    return marked
